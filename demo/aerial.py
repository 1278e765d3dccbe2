"""Synthetic large aerial photos with thin structures, for ``01_prepare.py --demo --demo-kind aerial-large``.

    from demo.aerial import generate
    generate(Path("input/demo_aerial"), 8, 2, width=6000, height=4000)   # issue 27's drone-photo size

What resizing to a network size loses and tiles keep: each photo holds, at its own resolution,
0 background (grass and soil, smooth colour waves, texture), 1 fence (polylines 2-3 px wide, dark wood),
2 pole (discs of radius 3-5 px, grey, with a shadow that is background), 3 building (rotated rectangles of
2-8% of the photo's width, roofs in a few tones). Fences and poles keep their size in pixels whatever the photo's
size (a fence is 2-3 px wide in a 6000 x 4000 photo: shrunk to 1920 x 1280 it is under one pixel); buildings scale
with the photo.

Layout written into ``root`` (as ``demo.scenes``): ``train/<id>.jpg`` with ``train_masks/<id>.png`` (8-bit class
indices, no suffix), ``test/<id>.jpg`` with ``test_masks/<id>.png``, ``classes.csv`` and ``sample_submission.csv``
(one row per test image and class 1..C-1, ``<id>_<class-name>``). Ids ``aerial<NNN>``, one group each.
Deterministic: photo i draws everything from ``np.random.default_rng([seed, i])``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from demo.scenes import encode_jpeg, encode_label_png
from lib import files, parallel

CLASSES = (("background", (0, 0, 0)), ("fence", (255, 200, 0)), ("pole", (255, 0, 255)),
           ("building", (220, 40, 40)))
CLASSES_CSV = "classes.csv"
FENCE_WIDTHS = (2, 3)  # px, at the photo's own resolution
POLE_RADII = (3, 5)  # px


def classes_csv() -> str:
    return "".join(f"{line}\n" for line in ["name,r,g,b", *(f"{n},{r},{g},{b}" for n, (r, g, b) in CLASSES)])


def photo_id(number: int) -> str:
    return f"aerial{number:03d}"


def render(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """((height, width, 3) uint8 RGB photo, (height, width) uint8 labels) of one synthetic aerial photo."""
    small = rng.normal(0, 1, (max(2, height // 300), max(2, width // 300))).astype(np.float32)
    waves = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]  # brightness
    base = np.array([95, 125, 60], np.float32) + rng.normal(0, 8, 3)
    image = base * (1 + 0.15 * waves) + rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    label = np.zeros((height, width), np.uint8)
    side = min(width, height)
    for _ in range(int(rng.integers(4, 9))):  # buildings
        w, h = rng.uniform(0.02, 0.08, 2) * width
        centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
        box = cv2.boxPoints((centre, (float(w), float(h)), float(rng.uniform(0, 90)))).astype(np.int32)
        tone = rng.choice([[150, 70, 60], [120, 120, 125], [170, 150, 130]]) + rng.normal(0, 8, 3)
        cv2.fillPoly(image, [box], tone.tolist())
        cv2.fillPoly(label, [box], 3)
    for _ in range(int(rng.integers(3, 7))):  # fences: polylines across the photo
        n = int(rng.integers(3, 7))
        start = rng.uniform(0, 1, 2) * (width, height)
        steps = rng.normal(0, side / 6, (n, 2))
        points = np.cumsum(np.vstack([start, steps]), axis=0).astype(np.int32)
        thickness = int(rng.integers(FENCE_WIDTHS[0], FENCE_WIDTHS[1] + 1))
        tone = (np.array([70, 50, 35]) + rng.normal(0, 6, 3)).tolist()
        cv2.polylines(image, [points], False, tone, thickness, cv2.LINE_8)
        cv2.polylines(label, [points], False, 1, thickness, cv2.LINE_8)
    for _ in range(int(rng.integers(60, 150))):  # poles: small discs with a shadow (background)
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        r = int(rng.integers(POLE_RADII[0], POLE_RADII[1] + 1))
        cv2.line(image, (x, y), (x + 6 * r, y + 3 * r), (40, 50, 30), max(1, r // 2))
        cv2.circle(image, (x, y), r, (185, 185, 190), -1)
        cv2.circle(label, (x, y), r, 2, -1)
    image = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (3, 3), 0.6)
    return image, label


@dataclass(frozen=True)
class _Job:
    root: Path
    images: str
    masks: str
    number: int
    seed: int
    width: int
    height: int


def _write(job: _Job) -> str:
    image, label = render(np.random.default_rng([job.seed, job.number]), job.width, job.height)
    image_id = photo_id(job.number)
    files.write_bytes_atomic(job.root / job.images / f"{image_id}.jpg", encode_jpeg(image))
    files.write_bytes_atomic(job.root / job.masks / f"{image_id}.png", encode_label_png(label))
    return image_id


def generate(root: Path, n_train: int = 8, n_test: int = 2, width: int = 6000, height: int = 4000, seed: int = 0,
             workers: int = 2) -> dict:
    """Write ``n_train`` + ``n_test`` photos of ``width`` x ``height`` into ``root`` (see the module); a summary."""
    if n_train < 1 or n_test < 0 or width < 64 or height < 64:
        raise ValueError(f"need n_train >= 1, n_test >= 0, size >= 64x64; got {n_train}, {n_test}, {width}x{height}")
    start = time.perf_counter()
    root = Path(root)
    jobs = [_Job(root, files.TRAIN, files.TRAIN_MASKS, i, seed, width, height) for i in range(n_train)] + \
        [_Job(root, files.TEST, files.TEST_MASKS, i, seed, width, height) for i in range(n_train, n_train + n_test)]
    with parallel.ordered(_write, jobs, workers if len(jobs) > 1 else 0) as results:
        ids = list(results)
    rows = [f"{i}_{name},1 1" for i in sorted(ids[n_train:]) for name, _ in CLASSES[1:]]
    files.write_text_atomic(root / CLASSES_CSV, classes_csv())
    files.write_text_atomic(root / files.SAMPLE_SUBMISSION, "".join(f"{line}\n" for line in ["img,rle_mask", *rows]))
    return {"root": str(root), "train": n_train, "test": n_test, "width": width, "height": height,
            "seconds": round(time.perf_counter() - start, 2)}
