"""Benchmark lib.rle.encode / decode against the canonical np.where encoder on real full-size masks.

Usage: python benchmarks/bench_rle.py [--n 200] [--repeats 5] [--sample ../shared/carvana_sample]

Loads N real masks once (not timed), then times each method over all N masks, `--repeats` times,
checks that both encoders give identical strings and that decode inverts encode, and prints a
markdown table (ms per mask: best and mean over repeats; masks/s from the best).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib import rle  # noqa: E402

DEFAULT_SAMPLE = ROOT.parent / "shared" / "carvana_sample"


def canonical_encode(mask: np.ndarray) -> str:
    """The well-known Kaggle encoder: pad with 0 at both ends, np.where on the changes."""
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def load_masks(sample: Path, n: int) -> list[np.ndarray]:
    """The first n masks (sorted by name) of sample/train_masks as (H, W) uint8 {0, 1}."""
    paths = sorted((sample / "train_masks").glob("*_mask.gif"))[:n]
    if not paths:
        raise SystemExit(f"error: no *_mask.gif in {sample / 'train_masks'} (pass --sample)")
    return [np.array(Image.open(p)) for p in paths]


def time_over(fn: Callable, items: list, repeats: int) -> tuple[list, list[float]]:
    """Run fn over all items `repeats` times; return the last outputs and the seconds of each pass."""
    seconds, outputs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [fn(x) for x in items]
        seconds.append(time.perf_counter() - start)
    return outputs, seconds


def row(name: str, seconds: list[float], n: int) -> str:
    best, mean = min(seconds) / n * 1e3, float(np.mean(seconds)) / n * 1e3
    return f"| {name} | {best:.3f} | {mean:.3f} | {1e3 / best:,.0f} |"


def main(args: argparse.Namespace) -> None:
    masks = load_masks(args.sample, args.n)
    n, shape = len(masks), masks[0].shape
    ours, t_ours = time_over(rle.encode, masks, args.repeats)
    ref, t_ref = time_over(canonical_encode, masks, args.repeats)
    mismatches = [i for i, (a, b) in enumerate(zip(ours, ref)) if a != b]
    assert not mismatches, f"encode differs from canonical on masks {mismatches[:10]}"
    decoded, t_dec = time_over(lambda code: rle.decode(code, shape), ours, args.repeats)
    assert all(np.array_equal(d.view(np.uint8), m) for d, m in zip(decoded, masks)), "decode(encode(m)) != m"

    n_numbers = sum(len(code.split(" ")) for code in ours) / n
    print(f"{n} masks of {shape[0]}x{shape[1]}, {args.repeats} repeats, {n_numbers:.0f} RLE numbers per mask; "
          f"identical outputs: yes; round trip: yes")
    print(f"python {platform.python_version()}, numpy {np.__version__}\n")
    print("| method | best ms/mask | mean ms/mask | masks/s (best) |")
    print("|---|---:|---:|---:|")
    print(row("canonical np.where encode", t_ref, n))
    print(row("lib.rle.encode", t_ours, n))
    print(row("lib.rle.decode", t_dec, n))
    print(f"\nencode speed-up over canonical: {min(t_ref) / min(t_ours):.2f}x (best), "
          f"{np.mean(t_ref) / np.mean(t_ours):.2f}x (mean)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of real masks to load")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the masks per method")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="folder with train_masks/")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
