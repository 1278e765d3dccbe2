"""Disk cost of a stored test map of a very large image (issue 27: a 100 MP map must not cost 100 MB of PNG).

Usage: python benchmarks/bench_tiles_maps.py [--side 10000] [--blobs 60]

03 --tile-size stores each test map at its image's size shrunk by --downscale, as test_probs/<id>.png (uint8,
lib/testmaps.png_bytes: zlib level 1, no row filter). This writes nothing: it encodes a synthetic side x side
probability map (soft-edged discs, as a sigmoid gives them, about 80% foreground) at --downscale 1, 2 and 4, once
clean and once with 2 bits of noise in every pixel (a network's background is rarely exactly 0), and prints the PNG
bytes and the encoding time of each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.testmaps import png_bytes  # noqa: E402


def synthetic_map(side: int, blobs: int, seed: int = 0) -> np.ndarray:
    """(side, side) uint8 probability map: the union of ``blobs`` discs with logistic edges 4 px wide."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:side, 0:side]
    prob = np.zeros((side, side), np.float32)
    for _ in range(blobs):
        cy, cx, r = rng.integers(0, side), rng.integers(0, side), rng.integers(side // 100, side // 7)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2, dtype=np.float32)
        prob = np.maximum(prob, 1 / (1 + np.exp(np.clip((d - r) / 4, -50, 50))))
    return (prob * 255).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=10000)
    parser.add_argument("--blobs", type=int, default=60)
    a = parser.parse_args()
    clean = synthetic_map(a.side, a.blobs)
    noisy = np.clip(clean.astype(np.int16) + np.random.default_rng(1).integers(0, 4, clean.shape), 0, 255
                    ).astype(np.uint8)
    print(f"{a.side} x {a.side} map ({a.side * a.side / 1e6:.0f} MP), foreground {(clean > 127).mean():.0%}")
    print("| map | --downscale | stored map | PNG | encode |\n|---|---|---|---|---|")
    for name, m in (("clean", clean), ("2-bit noise", noisy)):
        for downscale in (1, 2, 4):
            side = a.side // downscale
            stored = m if downscale == 1 else cv2.resize(m, (side, side), interpolation=cv2.INTER_AREA)
            start = time.perf_counter()
            size = len(png_bytes(stored, (a.side, a.side)))
            print(f"| {name} | {downscale} | {side} x {side} | {size / 1e6:.2f} MB | "
                  f"{time.perf_counter() - start:.2f} s |")


if __name__ == "__main__":
    main()
