"""Tiles at (reduced) native scale against whole images resized, at equal training compute (issue 27).

    python benchmarks/bench_tiles_vs_resize.py --work /tmp/tiles_vs_resize      # defaults: CPU-sized
    python benchmarks/bench_tiles_vs_resize.py --width 6000 --height 4000 --train 16 --test 4 --epochs 40 \
        --size 640x960 --tile-size 512 --downscale 2 --device cuda              # the issue's photo size, on a GPU

Writes under --work (outside the repository): ``01_prepare.py --demo --demo-kind aerial-large`` photos (thin
fences, small poles, buildings: demo/aerial.py), then trains fold 0 of a 2-fold split both ways with the demo
preset's network and the same batch size:
- resize: every photo resized to --size (--epochs epochs);
- tiles: random --tile-size tiles of the photos shrunk by --downscale, for the number of epochs that makes the
  pixels trained on (hence the compute) equal to resize's (at least 1);
then predicts the test photos with each fold-0 model (03 --folds 0, no TTA, no post-processing) and scores each
test map, decided as 04 decides it (argmax) at the photo's full resolution, against test_masks/: Dice per class
(pooled over the test photos: every pixel counts once) and wall time of each step. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib import files, testmaps, tuning as tuning_mod  # noqa: E402
from lib.inputs import read_labels  # noqa: E402
from lib.tiles import scaled_size  # noqa: E402


def run(script: str, *args: str) -> float:
    """Run a stage as a user would; its wall seconds. A failure stops the benchmark with its output."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"{script} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def pooled_dice(run_dir: Path, root: Path, names: list[str]) -> dict[str, float]:
    """Dice per class 1..C-1 over every test photo's pixels: the maps of ``run_dir`` decided by its tuning.json."""
    tuning = tuning_mod.read(run_dir)
    task = tuning.task
    inter = np.zeros(task.classes, np.int64)
    total = np.zeros(task.classes, np.int64)
    for path in sorted((root / files.TEST_MASKS).glob("*.png")):
        truth = read_labels(path, task.classes)
        m = testmaps.read_map(run_dir / files.TEST_PROBS / f"{path.stem}.png")
        pred = task.decide_maps([m], [1.0], truth.shape, tuning.threshold, tuning.postprocess)
        for c in range(1, task.classes):
            p, t = pred == c, truth == c
            inter[c] += int((p & t).sum())
            total[c] += int(p.sum() + t.sum())
    return {names[c]: (2 * inter[c] / total[c] if total[c] else 1.0) for c in range(1, task.classes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tiles_vs_resize"))
    ap.add_argument("--width", type=int, default=2400)
    ap.add_argument("--height", type=int, default=1600)
    ap.add_argument("--train", type=int, default=8, help="training photos (half validate fold 0)")
    ap.add_argument("--test", type=int, default=2)
    ap.add_argument("--size", default="320x480", help="resize: network HxW")
    ap.add_argument("--epochs", type=int, default=24, help="resize's epochs; tiles get the same pixels")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--downscale", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ways", default="resize,tiles", help="which ways to run, comma-separated")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    root, out = a.work / "input", a.work / "output"
    common = ["--preset", "demo", "--input", str(root), "--output", str(out), "--classes", "4", "--class-colors",
              str(root / "classes.csv"), "--n-folds", "2", "--batch-size", str(a.batch_size), "--device", a.device,
              "--threads", str(a.threads), "--jobs", "1", "--tta", "none", "--postprocess", "none", "--val-every", "1000",
              "--workers", "1"]
    demo = ["--demo", "--demo-kind", "aerial-large", "--demo-train-cars", str(a.train), "--demo-test-cars",
            str(a.test), "--demo-width", str(a.width), "--demo-height", str(a.height)]
    n_train = a.train - a.train // 2  # fold 0 of the 2-fold split trains on about half
    th, tw = scaled_size(a.height, a.width, a.downscale)
    tiles_per_epoch = n_train * math.ceil(th * tw / a.tile_size ** 2)
    resize_pixels = a.epochs * n_train * h * w
    tile_epochs = max(1, round(resize_pixels / (tiles_per_epoch * a.tile_size ** 2)))
    ways = {"resize": (["--experiment", "resize", "--height", str(h), "--width", str(w)], a.epochs,
                       f"{a.width}x{a.height} resized to {w}x{h}"),
            "tiles": (["--experiment", "tiles", "--tile-size", str(a.tile_size), "--downscale", str(a.downscale)],
                      tile_epochs, f"tiles of {a.tile_size} at 1/{a.downscale:g} ({tw}x{th})")}
    results = {}
    for name, (flags, epochs, what) in ((k, v) for k, v in ways.items() if k in a.ways.split(",")):
        times = {"01": run("01_prepare.py", *common, *flags, *demo)}
        names = [line.split(",")[0] for line in (root / "classes.csv").read_text().splitlines()[1:]]
        times["02"] = run("02_train.py", "--fold", "0", "--restart", *common, *flags, "--epochs", str(epochs))
        times["03"] = run("03_predict.py", "--folds", "0", "--replace", "--retune", *common, *flags)
        run_dir = files.run_dir(out, name)
        results[name] = {"what": what, "epochs": epochs,
                         "train_mpix": round(epochs * (n_train * h * w if name == "resize"
                                                       else tiles_per_epoch * a.tile_size ** 2) / 1e6, 1),
                         "dice": pooled_dice(run_dir, root, names), "seconds": {k: round(v) for k, v in times.items()}}
        print(json.dumps({name: results[name]}), flush=True)
    classes = list(next(iter(results.values()))["dice"])
    print(f"\n{a.train} train ({n_train} train fold 0) + {a.test} test photos of {a.width}x{a.height}, "
          f"{platform.processor() or platform.machine()}, --device {a.device}\n")
    print("| way | epochs | pixels trained (M) | " + " | ".join(f"Dice {c}" for c in classes)
          + " | 02 s | 03 s |\n|---|---|---|" + "---|" * len(classes) + "---|---|")
    for name, r in results.items():
        print(f"| {r['what']} | {r['epochs']} | {r['train_mpix']} | "
              + " | ".join(f"{r['dice'][c]:.4f}" for c in classes) + f" | {r['seconds']['02']} | {r['seconds']['03']} |")


if __name__ == "__main__":
    main()
