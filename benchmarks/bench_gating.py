"""Empty-mask gating: out-of-fold Dice with and without a tuned minimum mask area, on sets with a share of empty
images (a noisy model's maps made directly: demo/noisy.py), and the cost of the joint search.

    .venv/bin/python benchmarks/bench_gating.py --images 400 --height 320 --width 480
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from demo.noisy import noisy_maps  # noqa: E402
from lib.metrics import best_threshold, best_threshold_and_min_area, dice_histograms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--shares", default="0,0.25,0.5,0.7", help="empty shares, comma-separated")
    a = ap.parse_args()
    print("| empty images | threshold, no gating | OOF Dice, no gating | threshold, gated | min area (share of the "
          "image) | OOF Dice, gated | gain | joint search s (one-pass, ungated s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for share in (float(s) for s in a.shares.split(",")):
        probs, truths = noisy_maps(a.images, share, a.height, a.width, seed=1)
        hists = np.stack([dice_histograms(p, t) for p, t in zip(probs, truths)])
        start = time.perf_counter()
        t0, d0, _ = best_threshold(hists)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        t1, area, d1, _ = best_threshold_and_min_area(hists)
        joint = time.perf_counter() - start
        print(f"| {share:.0%} | {t0:.3f} | {d0:.5f} | {t1:.3f} | {area:g} | {d1:.5f} | {d1 - d0:+.5f} | "
              f"{joint:.3f} ({plain:.3f}) |")


if __name__ == "__main__":
    main()
