"""Dice scores and threshold tuning, scored the Carvana way (per image, then averaged).

Probabilities are stored as uint8 levels 0..255 (``round(p * 255)``); the mask at level k is
``prob_u8 > k``. A threshold t in the open interval (0, 1) maps to the level ``floor(t * 255)`` (so that the mask
holds exactly the pixels whose stored probability k / 255 is above t, and a map's 1.0 pixels pass any t < 1) in
exactly one place, ``level_of``, and back with ``threshold_of``; ``binarize`` applies it.

Threshold tuning makes one pass over the pixels: ``dice_histograms`` counts, per image, how many
pixels of each level fall outside / inside the truth; ``dice_by_level`` turns those counts into the
Dice at every level at once; ``best_threshold`` picks the level with the best mean Dice.

Empty-mask gating: a mask whose area is below ``min_area`` (a fraction of its image's pixels) is emptied (``gate``):
one stray blob on an image without an object scores 0, the empty mask 1. The same histograms hold each image's
predicted area at every level (the pixels above it), so ``best_threshold_and_min_area`` tunes the threshold and the
minimum area jointly, still in one pass over the pixels; on a set without empty truths gating can only lose, and the
tuned minimum area stays 0. A class of a multi-class argmax has no threshold to tune: four counts per image and class
(``AREA_STATS``: its predicted area, the overlap with its truth, its truth area, the image's pixels) hold its Dice at
every minimum area (``gated_dice_of_areas``), and ``best_min_area`` searches them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "N_LEVELS",
    "dice",
    "mean_dice",
    "level_of",
    "threshold_of",
    "binarize",
    "dice_histograms",
    "dice_by_level",
    "best_threshold",
    "MIN_AREAS",
    "gate",
    "predicted_area_by_level",
    "gated_dice_by_level",
    "best_threshold_and_min_area",
    "AREA_STATS",
    "gated_dice_of_areas",
    "best_min_area",
]

N_LEVELS = 256  # uint8 probability levels 0..255; level = round(p * 255)
_MAX_LEVEL = N_LEVELS - 1
_EXACT_FLOAT32 = 2 ** 24  # integers below this are exact in float32


def _check_same_shape(a: NDArray, b: NDArray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


def dice(pred: NDArray, truth: NDArray) -> float:
    """Dice coefficient 2|P∩T| / (|P| + |T|) of one image; 1.0 when both masks are empty.

    pred, truth: (H, W) (any equal shape) bool masks; other dtypes count nonzero as True.
    """
    _check_same_shape(pred, truth, "pred and truth")
    p = pred.astype(np.bool_, copy=False)
    t = truth.astype(np.bool_, copy=False)
    total = np.count_nonzero(p) + np.count_nonzero(t)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(p & t) / total


def mean_dice(preds: Iterable[NDArray], truths: Iterable[NDArray]) -> float:
    """Mean over images of ``dice(pred, truth)``. preds, truths: equally long sequences of (H, W) masks."""
    scores = []
    for i, (p, t) in enumerate(_strict_zip(preds, truths)):
        try:
            scores.append(dice(p, t))
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from None
    if not scores:
        raise ValueError("mean_dice needs at least one image")
    return float(np.mean(scores))


def _strict_zip(a: Iterable, b: Iterable) -> Iterable[tuple]:
    """zip that raises ValueError when the two iterables have different lengths."""
    sentinel = object()
    ia, ib = iter(a), iter(b)
    while True:
        x, y = next(ia, sentinel), next(ib, sentinel)
        if x is sentinel and y is sentinel:
            return
        if x is sentinel or y is sentinel:
            raise ValueError("preds and truths have different lengths")
        yield x, y


_LEVEL_TOLERANCE = 1e-7  # t * 255 within this of an integer level k is k (k / 255 does not come back exact)


def level_of(threshold: float) -> int:
    """uint8 level k for a threshold in the open interval (0, 1): mask = prob_u8 > k keeps exactly the levels whose
    probability v / 255 is above the threshold, k = floor(threshold * 255) (0 ... 254: 0.999 keeps the 1.0 pixels);
    ``level_of(threshold_of(k)) == k``."""
    if not 0.0 < threshold < 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be in the open interval (0, 1), got {threshold!r}")
    return min(int(math.floor(threshold * _MAX_LEVEL + _LEVEL_TOLERANCE)), _MAX_LEVEL - 1)


def threshold_of(level: int) -> float:
    """Threshold level / 255 of a uint8 level in 0..255 (the inverse of ``level_of``)."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= _MAX_LEVEL:
        raise ValueError(f"level must be an integer in 0..{_MAX_LEVEL}, got {level!r}")
    return int(level) / _MAX_LEVEL


def _check_u8(prob_u8: NDArray) -> None:
    if prob_u8.dtype != np.uint8:
        raise TypeError(f"prob_u8 must be uint8 levels 0..255 (round(p * 255)), got dtype {prob_u8.dtype}")


def binarize(prob_u8: NDArray[np.uint8], threshold: float) -> NDArray[np.bool_]:
    """Mask ``prob_u8 > level_of(threshold)``. prob_u8: (H, W) (any shape) uint8 -> bool, same shape."""
    _check_u8(prob_u8)
    return prob_u8 > level_of(threshold)


def dice_histograms(prob_u8: NDArray[np.uint8], truth: NDArray) -> NDArray[np.int64]:
    """Per-level pixel counts of one image for one-pass threshold tuning.

    prob_u8: (H, W) uint8 levels; truth: (H, W) bool (nonzero = car).
    Returns (2, 256) int64: row 0 counts the pixels of each level outside the truth, row 1 inside.
    """
    _check_u8(prob_u8)
    _check_same_shape(prob_u8, truth, "prob_u8 and truth")
    inside_mask = np.ascontiguousarray(truth.astype(np.bool_, copy=False)).view(np.uint8)
    prob_u8 = np.ascontiguousarray(prob_u8)
    if prob_u8.ndim == 2 and prob_u8.size < _EXACT_FLOAT32:
        # OpenCV's histogram (float32 counts, exact below 2**24 pixels) is ~3x faster than np.bincount here,
        # and this runs on every out-of-fold image of every TTA mode and baseline
        inside = cv2.calcHist([prob_u8], [0], inside_mask, [N_LEVELS], [0, N_LEVELS]).ravel()
        total = cv2.calcHist([prob_u8], [0], None, [N_LEVELS], [0, N_LEVELS]).ravel()
        return np.stack([total - inside, inside]).astype(np.int64)
    code = inside_mask.astype(np.uint16) << 8
    code |= prob_u8
    counts = np.bincount(code.ravel(), minlength=2 * N_LEVELS)
    return counts.reshape(2, N_LEVELS).astype(np.int64, copy=False)


def dice_by_level(hists: NDArray[np.int64]) -> NDArray[np.float64]:
    """Dice of each image at each level k (mask = prob_u8 > k), from stacked ``dice_histograms``.

    hists: (N, 2, 256) counts. Returns (N, 256) float64; 1.0 where prediction and truth are both empty.
    """
    hists = np.asarray(hists)
    if hists.ndim != 3 or hists.shape[1:] != (2, N_LEVELS):
        raise ValueError(f"hists must have shape (N, 2, {N_LEVELS}), got {hists.shape}")
    hists = hists.astype(np.int64, copy=False)
    outside, inside = hists[:, 0], hists[:, 1]
    n_truth = inside.sum(axis=1, keepdims=True)  # (N, 1)
    # Pixels with level > k: total minus the cumulative count up to and including k.
    tp = n_truth - np.cumsum(inside, axis=1)  # (N, 256)
    fp = outside.sum(axis=1, keepdims=True) - np.cumsum(outside, axis=1)
    denom = 2 * tp + fp + (n_truth - tp)  # |pred| + |truth|
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(denom > 0, 2.0 * tp / denom, 1.0)
    return scores


def best_threshold(hists: NDArray[np.int64]) -> tuple[float, float, NDArray[np.float64]]:
    """Threshold with the best mean Dice over images.

    hists: (N, 2, 256) stacked ``dice_histograms``. Only levels 1..254 are candidates, so the threshold
    lies in the open interval (0, 1); ties go to the lowest level.
    Returns (threshold, mean Dice at it, (256,) mean Dice at every level).
    """
    scores = dice_by_level(hists)
    if scores.shape[0] == 0:
        raise ValueError("best_threshold needs the histograms of at least one image")
    per_level = scores.mean(axis=0)
    level = 1 + int(np.argmax(per_level[1:_MAX_LEVEL]))
    return threshold_of(level), float(per_level[level]), per_level


# the minimum areas tried, as fractions of the image (0: no gating; 0.001 of a 1918 x 1280 image: 2455 pixels)
MIN_AREAS = (0.0, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)


def gate(mask: NDArray[np.bool_], min_area: float) -> NDArray[np.bool_]:
    """``mask`` emptied when it covers fewer than ``min_area * mask.size`` pixels (a fraction of the image, in
    [0, 1)); min_area 0 returns it unchanged (the same array)."""
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"min_area must be a fraction of the image in [0, 1), got {min_area!r}")
    if min_area == 0.0 or np.count_nonzero(mask) >= min_area * mask.size:
        return mask
    return np.zeros_like(mask)


def predicted_area_by_level(hists: NDArray[np.int64]) -> NDArray[np.int64]:
    """(N, 2, 256) ``dice_histograms`` -> (N, 256) pixels of each image's mask at each level k (prob_u8 > k)."""
    total = np.asarray(hists, dtype=np.int64).sum(axis=1)  # (N, 256) pixels per level
    return total.sum(axis=1, keepdims=True) - np.cumsum(total, axis=1)


def gated_dice_by_level(hists: NDArray[np.int64], min_area: float) -> NDArray[np.float64]:
    """``dice_by_level`` with each mask ``gate``d at ``min_area``: where an image's mask at level k is smaller, it is
    empty, scoring 1 on an image without truth and 0 on the others. (N, 256) float64."""
    scores = dice_by_level(hists)
    if min_area == 0.0:
        return scores
    hists = np.asarray(hists, dtype=np.int64)
    pixels = hists.sum(axis=(1, 2))[:, None]  # (N, 1) the image's size
    empty_truth = (hists[:, 1].sum(axis=1) == 0)[:, None]
    return np.where(predicted_area_by_level(hists) < min_area * pixels, empty_truth.astype(np.float64), scores)


def best_threshold_and_min_area(hists: NDArray[np.int64], min_areas: Iterable[float] = MIN_AREAS
                                ) -> tuple[float, float, float, NDArray[np.float64]]:
    """The threshold and minimum area (``gate``) with the best mean Dice over images, searched jointly.

    hists: (N, 2, 256) stacked ``dice_histograms``; levels 1..254 as in ``best_threshold``. Ties go to the smallest
    minimum area (0 first: gating must buy something to be kept), then to the lowest level. Returns (threshold,
    min_area, mean Dice at both, (256,) mean Dice at every level at that min_area).
    """
    if np.asarray(hists).shape[0] == 0:
        raise ValueError("best_threshold_and_min_area needs the histograms of at least one image")
    best = None
    for a in sorted(set(min_areas)):
        per_level = gated_dice_by_level(hists, a).mean(axis=0)
        level = 1 + int(np.argmax(per_level[1:_MAX_LEVEL]))
        if best is None or per_level[level] > best[2]:
            best = (threshold_of(level), a, float(per_level[level]), per_level)
    if best is None:
        raise ValueError("no minimum area to try")
    return best


# what ``gated_dice_of_areas`` reads of one image and class, in this order along the last axis
AREA_STATS = ("predicted", "intersection", "truth", "pixels")


def gated_dice_of_areas(stats: NDArray[np.int64], min_area: float) -> NDArray[np.float64]:
    """Dice of each image from its ``AREA_STATS`` counts (..., 4) (predicted area, intersection, truth area, pixels
    of the image), the prediction ``gate``d at ``min_area``: emptied where it covers fewer than ``min_area`` of the
    image's pixels, scoring 1 where the truth is empty and 0 elsewhere; 1 where both are empty. Shape (...)."""
    stats = np.asarray(stats, dtype=np.int64)
    if stats.shape[-1:] != (len(AREA_STATS),):
        raise ValueError(f"stats must end with an axis of {len(AREA_STATS)} counts {AREA_STATS}, got {stats.shape}")
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"min_area must be a fraction of the image in [0, 1), got {min_area!r}")
    predicted, both, truth, pixels = np.moveaxis(stats, -1, 0)
    total = predicted + truth
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(total > 0, 2.0 * both / total, 1.0)
    if min_area == 0.0:
        return scores
    return np.where(predicted < min_area * pixels, (truth == 0).astype(np.float64), scores)


def best_min_area(stats: NDArray[np.int64], min_areas: Iterable[float] = MIN_AREAS) -> tuple[float, float]:
    """(minimum area, mean Dice at it) with the best mean Dice over the images of (N, 4) ``AREA_STATS`` counts of one
    class; ties go to the smallest minimum area (0 first: gating must buy something to be kept)."""
    stats = np.asarray(stats)
    if stats.ndim != 2 or stats.shape[0] == 0:
        raise ValueError(f"best_min_area needs (N >= 1, {len(AREA_STATS)}) counts, got {stats.shape}")
    best = None
    for a in sorted(set(min_areas)):
        d = float(gated_dice_of_areas(stats, a).mean())
        if best is None or d > best[1]:
            best = (a, d)
    if best is None:
        raise ValueError("no minimum area to try")
    return best
