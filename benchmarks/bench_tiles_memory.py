"""Peak memory of 03_predict.py --tile-size on one very large photo (issue 27: a 70 MP photo within 3 GB).

Usage: python benchmarks/bench_tiles_memory.py [--path images|test] [--work /tmp/tiles_memory] [--height 7000]
       [--width 10000] [--tile-size 512] [--tile-overlap 0.25] [--downscale 1] [--threads 2]

Writes under --work (outside the repository) a synthetic JPEG of height x width and untrained fold models of
--preset demo's shape (memory does not depend on the weights), then runs under /usr/bin/time -v and prints peak
resident set size and wall time of each process:
- ``--path images``: 03_predict.py --images on the photo (the photo predictor), and the mask's size;
- ``--path test``: the photo as the one test image of a Kaggle-layout folder (``test/`` and
  ``sample_submission.csv``; 2 small training images of the demo cars for the split and the out-of-fold tuning),
  03_predict.py (tunes on the training images' out-of-fold maps, then writes the test map by sliding window), then
  04_submit.py, and decodes the submission's row to check it is a full-size mask.
"""
from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib import files, folds as folds_mod, rle  # noqa: E402
from lib.model import build_model, checkpoint_state, write_checkpoint  # noqa: E402
from lib.submission import read_submission  # noqa: E402
from lib.task import Task  # noqa: E402
from params import PRESETS, make_params  # noqa: E402


def write_models(out: Path, folds: list[int], split=None) -> None:
    """An untrained model of --preset demo's shape per fold (recording its fold's split when ``split`` is given)."""
    p = make_params(**PRESETS["demo"])
    torch.manual_seed(0)
    for k in folds:
        folder = files.fold_dir(out, p.experiment, k)
        folder.mkdir(parents=True, exist_ok=True)
        extra = {} if split is None else {"split": folds_mod.fold_digest(split, k)}
        write_checkpoint(folder / files.BEST, checkpoint_state(build_model(p), p, epoch=1, val_dice=0.5,
                                                               task=Task.of(p).record(), **extra))


def write_photo(path: Path, height: int, width: int) -> None:
    """A smooth random JPEG of height x width (a noise image enlarged 10 times: JPEG-sized like a photo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    small = np.random.default_rng(0).integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR),
                [cv2.IMWRITE_JPEG_QUALITY, 90])


def timed(cmd: list) -> tuple[float, str]:
    """Run ``cmd`` under /usr/bin/time -v: (peak RSS in GiB, wall time as time prints it)."""
    proc = subprocess.run(["/usr/bin/time", "-v", *[str(c) for c in cmd]], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"{Path(str(cmd[1])).name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    return rss_kb / 2**20, wall


def photo_path(work: Path, a) -> list[tuple[str, float, str, str]]:
    """03 --images on one large photo: [(process, GiB, wall, what came out)]."""
    out, photos, masks = work / "out", work / "photos", work / "masks"
    write_models(out, [0])
    write_photo(photos / "large.jpg", a.height, a.width)
    gib, wall = timed([sys.executable, ROOT / "03_predict.py", "--preset", "demo", "--output", out, "--images", photos,
                       "--images-out", masks, "--overwrite", *tiling(a), "--tta", "none", "--threshold", "0.5",
                       "--postprocess", "none"])
    with Image.open(masks / "large_mask.png") as m:
        return [("03_predict.py --images", gib, wall, f"{m.size[1]} x {m.size[0]} mask PNG")]


def test_path(work: Path, a) -> list[tuple[str, float, str, str]]:
    """The photo as a Kaggle test image: 03 (tuning + test map) then 04: [(process, GiB, wall, what came out)]."""
    root, out = work / "input", work / "out"
    common = ["--preset", "demo", "--input", root, "--output", out, "--n-folds", "2", "--cache", "off"]
    subprocess.run([sys.executable, ROOT / "01_prepare.py", *common, "--demo", "--force", "--demo-train-cars", "2",
                    "--demo-test-cars", "0", "--demo-width", "480", "--demo-height", "320"], check=True, cwd=ROOT,
                   capture_output=True)
    write_photo(root / files.TEST / "large.jpg", a.height, a.width)
    (root / "sample_submission.csv").write_text("img,rle_mask\nlarge.jpg,1 1\n")
    write_models(out, [0, 1], folds_mod.read(out))
    gib3, wall3 = timed([sys.executable, ROOT / "03_predict.py", *common, "--replace", *tiling(a), "--tta", "none",
                         "--postprocess", "none"])
    stored = sum(f.stat().st_size for f in out.rglob("test_probs/**/*") if f.is_file())
    rows = [("03_predict.py (tuning + test map)", gib3, wall3, f"test map stored: {stored / 2**20:.1f} MiB")]
    gib, wall = timed([sys.executable, ROOT / "04_submit.py", *common, *tiling(a), "--postprocess", "none"])
    run = files.run_dir(out, make_params(**PRESETS["demo"]).experiment)
    (key, code), = read_submission(run / "submission.csv.gz")
    mask = rle.decode(code, (a.height, a.width))
    return [*rows, ("04_submit.py", gib, wall, f"row {key}: a {mask.shape[0]} x {mask.shape[1]} mask "
                    f"({mask.mean():.1%} foreground)")]


def tiling(a) -> list[str]:
    return ["--tile-size", a.tile_size, "--tile-overlap", a.tile_overlap, "--downscale", a.downscale,
            "--predict-batch-size", "4", "--workers", "1", "--threads", a.threads]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", choices=("images", "test"), default="images")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tiles_memory"))
    ap.add_argument("--height", type=int, default=7000)
    ap.add_argument("--width", type=int, default=10000)
    ap.add_argument("--tile-size", default="512")
    ap.add_argument("--tile-overlap", default="0.25")
    ap.add_argument("--downscale", default="1")
    ap.add_argument("--threads", default="2")
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)  # every figure from scratch: 03 would reuse an earlier run's map
    rows = (photo_path if a.path == "images" else test_path)(a.work, a)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"{a.height} x {a.width} photo ({a.height * a.width / 1e6:.0f} MP), tile {a.tile_size} overlap "
          f"{a.tile_overlap} downscale {a.downscale}, {cpu}, --threads {a.threads}\n")
    print("| process | peak RSS | wall | output |\n|---|---|---|---|")
    for name, gib, wall, what in rows:
        print(f"| {name} | {gib:.2f} GiB | {wall} | {what} |")

if __name__ == "__main__":
    main()
