"""How much Dice does training at a smaller size cost by itself? The ceiling of a perfect low-res prediction.

    .venv/bin/python benchmarks/bench_resolution.py --every 8

Each real mask is area-downscaled to the network size (what a perfect model would predict there),
brought back with lib.geometry.from_net (bilinear), thresholded at 0.5 and scored against the
full-resolution truth (lib.metrics.dice). Reference in the same run: full resolution (1280 x 1920, pad/crop).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from lib.geometry import from_net, to_net  # noqa: E402
from lib.inputs import read_mask  # noqa: E402
from lib.metrics import dice  # noqa: E402

SIZES = [(96, 160), (128, 192), (160, 256), (192, 288), (256, 384), (320, 480), (512, 768), (1280, 1920)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "carvana_sample")
    ap.add_argument("--every", type=int, default=8, help="use every N-th mask")
    args = ap.parse_args()
    masks = [read_mask(p) for p in sorted((args.sample / "train_masks").glob("*_mask.gif"))[:: args.every]]
    h0, w0 = masks[0].shape
    print(f"{len(masks)} real masks at {w0}x{h0}\n\n| network size | mean Dice of a perfect prediction |\n|---|---:|")
    for h, w in SIZES:
        scores = [dice(from_net(to_net(m.astype(np.float32), h, w, cv2.INTER_AREA), h0, w0) > 0.5, m) for m in masks]
        print(f"| {h} x {w} | {np.mean(scores):.5f} |", flush=True)


if __name__ == "__main__":
    main()
