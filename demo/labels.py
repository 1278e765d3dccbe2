"""Synthetic photos with overlapping labels, for ``01_prepare.py --demo --demo-kind multilabel`` (give ``--classes 3
--multilabel``).

    from demo.labels import generate
    generate(Path("input/demo_labels"), 16, 4, width=96, height=64)

Each photo is a textured grey field with up to three labelled regions drawn as tints that blend where they overlap:
label 1 ellipses (red tint), label 2 rectangles (blue tint), label 3 a broad diagonal band (brighter, striped). The
labels overlap often (a pixel may hold two or three) and every fourth photo holds none (empty masks, where gating
pays). Layout written into ``root``: ``train/<id>.jpg`` with an instance folder ``train_masks/<id>/<n>__<label>.png``
per photo (an all-0 ``0__1.png`` for a photo with no label), the same under ``test/`` and ``test_masks/``, and
``sample_submission.csv`` with a row ``<file name>_<label>`` per test photo and label (Severstal's form). Ids
``ml<NNN>``; photo i draws everything from ``np.random.default_rng([seed, i])``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from demo.scenes import encode_jpeg, encode_label_png
from lib import files

LABELS = ("1", "2", "3")  # Severstal's ClassIds: the task's default names
TINTS = np.array([[90, -30, -30], [-30, -20, 90], [50, 50, 50]], np.float32)  # RGB shift of each label


def photo_id(number: int) -> str:
    return f"ml{number:03d}"


def render(rng: np.random.Generator, width: int, height: int, empty: bool) -> tuple[np.ndarray, np.ndarray]:
    """((height, width, 3) uint8 RGB photo, (3, height, width) bool truth) of one photo; no label when ``empty``."""
    truth = np.zeros((len(LABELS), height, width), np.uint8)
    if not empty:
        for _ in range(int(rng.integers(1, 3))):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(width // 8, width // 3)), int(rng.integers(height // 8, height // 3)))
            cv2.ellipse(truth[0], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        if rng.random() < 0.7:
            x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            cv2.rectangle(truth[1], (x, y), (x + int(rng.integers(width // 5, width // 2)),
                                             y + int(rng.integers(height // 5, height // 2))), 1, -1)
        if rng.random() < 0.5:
            offset = int(rng.integers(-width // 2, width // 2))
            cv2.line(truth[2], (offset, 0), (offset + height, height), 1, int(rng.integers(height // 6, height // 3)))
    field = 110 + 25 * cv2.resize(rng.normal(0, 1, (4, 6)).astype(np.float32), (width, height))
    image = np.repeat(field[..., None], 3, axis=2) + rng.normal(0, 6, (height, width, 3))
    image += np.tensordot(truth.transpose(1, 2, 0).astype(np.float32), TINTS, axes=1)
    stripes = (np.add.outer(np.arange(height), np.arange(width)) // 3) % 2  # label 3's texture
    image += truth[2][..., None] * stripes[..., None] * 20.0
    return np.clip(image, 0, 255).astype(np.uint8), truth.astype(bool)


def _write(root: Path, images: str, masks: str, number: int, seed: int, width: int, height: int) -> str:
    image, truth = render(np.random.default_rng([seed, number]), width, height, empty=number % 4 == 3)
    image_id = photo_id(number)
    files.write_bytes_atomic(root / images / f"{image_id}.jpg", encode_jpeg(image))
    held = [c for c in range(len(LABELS)) if truth[c].any()] or [0]  # an empty photo: one all-0 mask
    for n, c in enumerate(held):
        files.write_bytes_atomic(root / masks / image_id / f"{n}__{LABELS[c]}.png",
                                 encode_label_png(truth[c].astype(np.uint8) * 255))
    return image_id


def generate(root: Path, n_train: int = 16, n_test: int = 4, width: int = 96, height: int = 64, seed: int = 0
             ) -> None:
    """Write ``n_train`` + ``n_test`` photos of ``width`` x ``height`` into ``root`` (see the module)."""
    if n_train < 1 or n_test < 0 or width < 32 or height < 32:
        raise ValueError(f"need n_train >= 1, n_test >= 0, size >= 32x32; got {n_train}, {n_test}, {width}x{height}")
    root = Path(root)
    for i in range(n_train):
        _write(root, files.TRAIN, files.TRAIN_MASKS, i, seed, width, height)
    tests = [_write(root, files.TEST, files.TEST_MASKS, i, seed, width, height)
             for i in range(n_train, n_train + n_test)]
    rows = [f"{i}.jpg_{label},1 1" for i in tests for label in LABELS]
    files.write_text_atomic(root / files.SAMPLE_SUBMISSION, "".join(f"{line}\n" for line in ["img,rle_mask", *rows]))
