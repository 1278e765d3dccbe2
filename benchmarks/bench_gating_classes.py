"""Multi-class empty-mask gating: out-of-fold mean class Dice of the argmax with and without a minimum area per class,
on sets where a share of the classes is absent from each image (a noisy model's maps made directly:
demo/noisy.py ``noisy_class_maps``), and the cost of the one pass over the maps (beside the pass that scored the
argmax before gating: ``oof.class_dices``) and of the search.

    .venv/bin/python benchmarks/bench_gating_classes.py --images 200 --height 320 --width 480
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from demo.noisy import noisy_class_maps  # noqa: E402
from lib.oof import class_areas, class_dices  # noqa: E402
from lib.task import Task  # noqa: E402


class _Truths:
    """What ``oof.class_areas`` reads of the cache: each row's size and truth labels."""

    def __init__(self, truths: list[np.ndarray]):
        self.truths = truths

    def size_of(self, row: int) -> tuple[int, int]:
        return self.truths[row].shape

    def full_mask(self, row: int) -> np.ndarray:
        return self.truths[row]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--shares", default="0,0.25,0.5,0.7", help="shares of absent classes, comma-separated")
    a = ap.parse_args()
    task = Task(a.classes)
    names = [task.names[c] for c in task.scored]
    print("| absent classes | OOF Dice, no gating | OOF Dice, gated | gain | min area per class (" + ", ".join(names)
          + ") | per class: Dice without -> with gating | one pass over the maps s (ungated pass s) | search s |")
    print("|---:|---:|---:|---:|---|---|---:|---:|")
    for share in (float(s) for s in a.shares.split(",")):
        maps, truths = noisy_class_maps(a.images, share, a.classes, a.height, a.width, seed=1)
        start = time.perf_counter()
        stats = class_areas(maps, _Truths(truths), np.arange(len(maps)), task)  # what 03's tuning pools per fold
        one_pass = time.perf_counter() - start
        start = time.perf_counter()
        class_dices(maps, _Truths(truths), np.arange(len(maps)), 0.5, task)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        _, gated, _, extra = task.pick([stats[: len(stats) // 2], stats[len(stats) // 2:]], 0.5)
        search = time.perf_counter() - start
        ungated = float(np.mean(list(extra["class_dice_ungated"].values())))
        areas = ", ".join(f"{v:g}" for v in extra["min_areas"].values())
        per_class = ", ".join(f"{extra['class_dice_ungated'][n]:.3f} -> {extra['class_dice'][n]:.3f}" for n in names)
        print(f"| {share:.0%} | {ungated:.5f} | {gated:.5f} | {gated - ungated:+.5f} | {areas} | {per_class} | "
              f"{one_pass:.2f} ({plain:.2f}) | {search:.4f} |")


if __name__ == "__main__":
    main()
