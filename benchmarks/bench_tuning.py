"""Threshold tuning: every threshold from one pass over the pixels, beside a loop over thresholds.

    .venv/bin/python benchmarks/bench_tuning.py --images 32

Uses real full-size masks from ../shared/carvana_sample (or --sample DIR) and realistic
out-of-fold maps made from them (the truth area-downscaled to 128 x 192, blurred, noised, uint8),
brought back to 1918 x 1280 as the pipeline does. Both methods must pick the same threshold.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from lib.geometry import from_net  # noqa: E402
from lib.inputs import read_mask  # noqa: E402
from lib.metrics import best_threshold, dice, dice_histograms, threshold_of  # noqa: E402


def fake_oof(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    small = cv2.resize(mask.astype(np.float32), (192, 128), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (5, 5), 1.2) + rng.normal(0, 0.08, small.shape)
    return np.clip(small * 255, 0, 255).round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "carvana_sample")
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args()
    paths = sorted((args.sample / "train_masks").glob("*_mask.gif"))[: args.images]
    rng = np.random.default_rng(0)
    truths = [read_mask(p) for p in paths]
    h0, w0 = truths[0].shape
    probs = [fake_oof(t, rng) for t in truths]

    start = time.perf_counter()
    hists = np.stack([dice_histograms(from_net(p, h0, w0), t) for p, t in zip(probs, truths)])
    threshold, best, _ = best_threshold(hists)
    one_pass = time.perf_counter() - start

    start = time.perf_counter()
    full = [from_net(p, h0, w0) for p in probs]
    scores = [np.mean([dice(f > level, t) for f, t in zip(full, truths)]) for level in range(1, 255)]
    loop = time.perf_counter() - start
    level = 1 + int(np.argmax(scores))

    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}; "
          f"{len(paths)} real masks at {w0}x{h0}, maps at 192x128\n")
    print("| method | thresholds | seconds | best threshold | mean Dice |\n|---|---:|---:|---:|---:|")
    print(f"| one pass: per-image histograms (lib.metrics) | 254 | {one_pass:.2f} | {threshold:.4f} | {best:.5f} |")
    print(f"| loop: re-threshold every image per candidate | 254 | {loop:.2f} | {threshold_of(level):.4f} | "
          f"{max(scores):.5f} |")
    print(f"\nspeed-up {loop / one_pass:.0f}x; same choice: {abs(threshold - threshold_of(level)) < 1e-9}")
    assert abs(best - max(scores)) < 1e-9


if __name__ == "__main__":
    main()
