"""Probability maps of a noisy binary model on a set where some images hold no object, made directly (no training):
for tests and benchmarks of empty-mask gating (lib/metrics.py ``best_threshold_and_min_area``)."""
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
