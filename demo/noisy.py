"""Probability maps of a noisy model on a set where some images hold no object (binary) or lack some classes
(multi-class), made directly (no training): for tests and benchmarks of empty-mask gating (lib/metrics.py
``best_threshold_and_min_area``, ``best_min_area``)."""
from __future__ import annotations

import numpy as np


def noisy_maps(n: int, empty_share: float, height: int = 48, width: int = 64, seed: int = 0
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(``n`` (height, width) uint8 probability maps, their bool truths): the first ``empty_share`` of the images
    hold no object, the others a rectangle the model finds (probability about 0.85 inside, 0.15 outside, with
    noise); on every image the model also paints one small false blob of 3 x 3 pixels with probability 0.6..0.95."""
    rng = np.random.default_rng(seed)
    probs, truths = [], []
    for i in range(n):
        truth = np.zeros((height, width), bool)
        if i >= n * empty_share:
            y, x = rng.integers(4, height // 2), rng.integers(4, width // 2)
            truth[y:y + rng.integers(height // 4, height // 2), x:x + rng.integers(width // 4, width // 2)] = True
        p = np.clip(rng.normal(0.15, 0.1, (height, width)) + 0.7 * truth + rng.normal(0, 0.05, (height, width)), 0, 1)
        y, x = rng.integers(0, height - 3), rng.integers(0, width - 3)
        p[y:y + 3, x:x + 3] = rng.uniform(0.6, 0.95)  # the stray blob
        probs.append(np.round(p * 255).astype(np.uint8))
        truths.append(truth)
    return probs, truths


def noisy_class_maps(n: int, absent_share: float, classes: int = 5, height: int = 48, width: int = 64,
                     seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(``n`` stacked class maps (classes * height, width) uint8, as a multi-class run stores them, their (height,
    width) uint8 truth labels): each class 1..C-1 is absent from an image with probability ``absent_share``, else a
    rectangle in its own band of columns that the model finds (its probability about 0.55 there, noisy; the
    background's about 0.5 elsewhere); on every image the model also paints a false blob of each class, class k's
    k * s pixels square, s = min(height, width) // 50 or 1 (at 0.7..0.95), so each class has its own best minimum
    area."""
    rng = np.random.default_rng(seed)
    band, s = width // (classes - 1), max(1, min(height, width) // 50)
    maps, truths = [], []
    for _ in range(n):
        truth = np.zeros((height, width), np.uint8)
        for c in range(1, classes):
            if rng.random() >= absent_share:
                y, x = rng.integers(0, height // 2), (c - 1) * band + rng.integers(0, band // 4)
                truth[y:y + rng.integers(height // 4, height // 2), x:x + rng.integers(band // 2, band * 3 // 4)] = c
        p = np.clip(rng.normal(0.1, 0.05, (classes, height, width)), 0, 1)
        p[0] += 0.4
        for c in range(1, classes):
            p[c] += 0.45 * (truth == c) + rng.normal(0, 0.05, (height, width))
            y, x = rng.integers(0, height - c * s), rng.integers(0, width - c * s)
            p[c, y:y + c * s, x:x + c * s] = rng.uniform(0.7, 0.95)  # the stray blob
        maps.append(np.round(np.clip(p, 0, 1) * 255).astype(np.uint8).reshape(classes * height, width))
        truths.append(truth)
    return maps, truths
