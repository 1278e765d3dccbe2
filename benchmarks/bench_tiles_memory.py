"""Peak memory of 03_predict.py --images --tile-size on one very large photo (issue 27: a 70 MP photo within 3 GB).

Usage: python benchmarks/bench_tiles_memory.py [--work /tmp/tiles_memory] [--height 7000] [--width 10000]
       [--tile-size 512] [--tile-overlap 0.25] [--downscale 1] [--threads 2]

Writes under --work (outside the repository): a synthetic JPEG of height x width, an untrained fold model of
--preset demo's shape (memory does not depend on the weights), then runs 03_predict.py --images under
/usr/bin/time -v and prints its peak resident set size, wall time and the mask's size.
"""
from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib import files  # noqa: E402
from lib.model import build_model, checkpoint_state, write_checkpoint  # noqa: E402
from lib.task import Task  # noqa: E402
from params import PRESETS, make_params  # noqa: E402


def make_inputs(work: Path, height: int, width: int) -> tuple[Path, Path]:
    """(the models' --output, the photo folder) under ``work``."""
    out, photos = work / "out", work / "photos"
    p = make_params(**PRESETS["demo"])
    folder = files.fold_dir(out, p.experiment, 0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    write_checkpoint(folder / files.BEST, checkpoint_state(build_model(p), p, epoch=1, val_dice=0.5,
                                                           task=Task.of(p).record()))
    photos.mkdir(parents=True, exist_ok=True)
    small = np.random.default_rng(0).integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
    cv2.imwrite(str(photos / "large.jpg"), cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR),
                [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out, photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/tiles_memory"))
    ap.add_argument("--height", type=int, default=7000)
    ap.add_argument("--width", type=int, default=10000)
    ap.add_argument("--tile-size", default="512")
    ap.add_argument("--tile-overlap", default="0.25")
    ap.add_argument("--downscale", default="1")
    ap.add_argument("--threads", default="2")
    a = ap.parse_args()
    out, photos = make_inputs(a.work, a.height, a.width)
    masks = a.work / "masks"
    cmd = ["/usr/bin/time", "-v", sys.executable, str(ROOT / "03_predict.py"), "--preset", "demo", "--output", out,
           "--images", photos, "--images-out", masks, "--overwrite", "--tile-size", a.tile_size, "--tile-overlap",
           a.tile_overlap, "--downscale", a.downscale, "--predict-batch-size", "4", "--workers", "1", "--threads",
           a.threads, "--tta", "none", "--threshold", "0.5", "--postprocess", "none"]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"03_predict.py failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr).group(1)
    with Image.open(masks / "large_mask.png") as m:
        mask_size = m.size
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"| photo | tile / overlap / downscale | peak RSS of 03 | wall | mask | machine |\n|---|---|---|---|---|---|\n"
          f"| {a.height} x {a.width} ({a.height * a.width / 1e6:.0f} MP) | {a.tile_size} / {a.tile_overlap} / "
          f"{a.downscale} | {rss_kb / 2**20:.2f} GiB | {wall} | {mask_size[1]} x {mask_size[0]} PNG | {cpu}, "
          f"--threads {a.threads} |")


if __name__ == "__main__":
    main()
