"""Synthetic 16-bit one-channel microscopy (``--demo-kind micro16``): images that 8-bit decoding would crush.

    from demo.micro import generate
    generate(Path("input"), n_train=24, n_test=6, width=192, height=128)

Each field of view is a 16-bit grey PNG: a dim background (about 400 counts) with a smooth illumination gradient,
shot noise, and 6-14 elliptical cells whose intensities (a further 150-700 counts) use only the bottom 1/60 of the
16-bit range, as a camera's raw counts often do: decoded as 8 bits (value // 256) the whole image is 1-4 grey levels.
Some cells are dimmer than the brightest background, so a global threshold cannot segment them. Binary masks
(0/255 PNG) mark the cells. Ids ``field<NNN>``; test/ with its truth in test_masks/, and sample_submission.csv.

Deterministic: field i draws from ``np.random.default_rng([seed, i])``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from lib import files
from lib.imageformat import write_pixels

BACKGROUND = 400.0  # counts of the dark background
GRADIENT = 250.0  # counts the illumination adds across the field
CELL_COUNTS = (150.0, 700.0)  # counts a cell adds above its background
NOISE = 40.0  # counts, Gaussian
CELLS = (6, 14)  # cells per field


def field(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """((height, width) uint16 image, (height, width) uint8 0/255 mask) of one field of view."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x / width + np.sin(angle) * y / height + 1.5) / 3.0
    image = BACKGROUND + GRADIENT * ramp
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(*CELLS, endpoint=True))):
        cell = np.zeros((height, width), np.uint8)
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(width // 30 + 2, width // 10 + 3)),
                int(rng.integers(height // 30 + 2, height // 10 + 3)))
        cv2.ellipse(cell, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        inside = cell.astype(bool)
        image[inside] += rng.uniform(*CELL_COUNTS) * (0.8 + 0.2 * rng.random(inside.sum()))
        mask[inside] = 255
    image += rng.normal(0, NOISE, image.shape)
    return np.clip(image, 0, 65535).round().astype(np.uint16), mask


def generate(root: Path, n_train: int = 24, n_test: int = 6, width: int = 192, height: int = 128,
             seed: int = 0) -> dict:
    """Write the 16-bit microscopy demo into ``root`` (see the module docstring); return a summary."""
    if n_train < 2 or n_test < 0 or width < 32 or height < 32:
        raise ValueError(f"need n_train >= 2, n_test >= 0, size >= 32x32; got {n_train}, {n_test}, {width}x{height}")
    root = Path(root)
    digits = max(3, len(str(n_train + n_test - 1)))
    test_ids = []
    for i in range(n_train + n_test):
        image_id = f"field{i:0{digits}d}"
        images, masks = (files.TRAIN, files.TRAIN_MASKS) if i < n_train else (files.TEST, files.TEST_MASKS)
        image, mask = field(np.random.default_rng([seed, i]), width, height)
        for folder in (root / images, root / masks):
            folder.mkdir(parents=True, exist_ok=True)
        write_pixels(root / images / f"{image_id}.png", image)
        write_pixels(root / masks / f"{image_id}_mask.png", mask)
        if i >= n_train:
            test_ids.append(image_id)
    files.write_text_atomic(root / files.SAMPLE_SUBMISSION,
                            "".join(f"{line}\n" for line in ["img,rle_mask", *(f"{i}.png,1 1" for i in test_ids)]))
    return {"root": str(root), "train": n_train, "test": n_test, "width": width, "height": height, "seed": seed}
