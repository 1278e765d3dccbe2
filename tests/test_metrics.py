"""lib.metrics: pinned Dice values, one-pass threshold tuning against brute force, level <-> threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lib import metrics
from lib.metrics import (
    best_threshold,
    binarize,
    dice,
    dice_by_level,
    dice_histograms,
    level_of,
    mean_dice,
    threshold_of,
)

# ---- dice ----------------------------------------------------------------------------------------


def test_dice_pinned() -> None:
    assert dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == 0.5
    assert dice(np.array([[1, 1], [1, 0]]), np.array([[1, 1], [0, 0]])) == pytest.approx(0.8)


def test_dice_empty_cases() -> None:
    empty, some = np.zeros((3, 4), bool), np.eye(3, 4, dtype=bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, some) == 0.0
    assert dice(some, empty) == 0.0
    assert dice(some, some) == 1.0


def test_dice_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(3, 4\).*\(4, 3\)"):
        dice(np.zeros((3, 4), bool), np.zeros((4, 3), bool))


def test_mean_dice() -> None:
    preds = [np.array([1, 1, 0, 0], bool), np.zeros(4, bool)]
    truths = [np.array([1, 0, 1, 0], bool), np.zeros(4, bool)]
    assert mean_dice(preds, truths) == 0.75
    with pytest.raises(ValueError, match="different lengths"):
        mean_dice(preds, truths[:1])
    with pytest.raises(ValueError, match="at least one"):
        mean_dice([], [])
    with pytest.raises(ValueError, match="image 1"):
        mean_dice(preds, [truths[0], np.zeros(5, bool)])


# ---- level <-> threshold -------------------------------------------------------------------------


def test_level_threshold_round_trip() -> None:
    for level in range(1, 255):
        assert level_of(threshold_of(level)) == level
    assert threshold_of(0) == 0.0 and threshold_of(255) == 1.0
    assert level_of(0.5) == 127  # keeps 128 / 255 = 0.502, drops 127 / 255 = 0.498
    assert level_of(0.4) == 102
    assert level_of(1e-9) == 0 and level_of(1 - 1e-9) == 254 and level_of(1 - 1e-12) == 254


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_level_of_out_of_range(threshold: float) -> None:
    with pytest.raises(ValueError, match="open interval"):
        level_of(threshold)


@pytest.mark.parametrize("level", [-1, 256, 1.5, True])
def test_threshold_of_out_of_range(level) -> None:
    with pytest.raises(ValueError, match="level"):
        threshold_of(level)


def test_binarize() -> None:
    prob = np.array([[0, 127, 128, 129, 255]], np.uint8)
    np.testing.assert_array_equal(binarize(prob, 0.5), [[False, False, True, True, True]])  # 128 / 255 > 0.5
    np.testing.assert_array_equal(binarize(prob, 0.498), [[False, True, True, True, True]])  # 127 / 255 = 0.49804
    np.testing.assert_array_equal(binarize(prob, 0.999), [[False, False, False, False, True]])
    with pytest.raises(TypeError, match="uint8"):
        binarize(prob.astype(np.float32) / 255, 0.5)


# ---- one-pass threshold tuning -------------------------------------------------------------------


def _images(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Probabilities correlated with truth, plus the edge cases: empty truth, empty and full predictions."""
    rng = np.random.default_rng(seed)
    probs, truths = [], []
    for _ in range(6):
        truth = rng.random((23, 37)) < rng.uniform(0.1, 0.9)
        noisy = np.clip(truth * rng.uniform(0.3, 0.7) + rng.normal(0.25, 0.2, truth.shape), 0, 1)
        probs.append(np.round(noisy * 255).astype(np.uint8))
        truths.append(truth)
    shape = (23, 37)
    probs += [rng.integers(0, 256, shape, dtype=np.uint8), np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8)]
    truths += [np.zeros(shape, bool), rng.random(shape) < 0.5, np.zeros(shape, bool)]
    return probs, truths


def test_dice_histograms_counts() -> None:
    probs, truths = _images()
    for prob, truth in zip(probs, truths):
        hist = dice_histograms(prob, truth)
        assert hist.shape == (2, metrics.N_LEVELS) and hist.dtype == np.int64
        np.testing.assert_array_equal(hist[0], np.bincount(prob[~truth], minlength=256))
        np.testing.assert_array_equal(hist[1], np.bincount(prob[truth], minlength=256))


def test_dice_histograms_same_counts_on_every_path() -> None:
    """2-D maps go through OpenCV's histogram, other shapes through np.bincount; strided views work too."""
    rng = np.random.default_rng(3)
    prob = rng.integers(0, 256, (2, 30, 40), dtype=np.uint8)
    truth = rng.random((2, 30, 40)) < 0.4
    stacked = dice_histograms(prob, truth)  # 3-D: np.bincount
    per_image = dice_histograms(prob[0], truth[0]) + dice_histograms(prob[1], truth[1])  # 2-D: OpenCV
    np.testing.assert_array_equal(stacked, per_image)
    strided = dice_histograms(prob[0, :, ::2], truth[0, :, ::2])
    np.testing.assert_array_equal(strided[1], np.bincount(prob[0, :, ::2][truth[0, :, ::2]], minlength=256))
    np.testing.assert_array_equal(strided.sum(axis=0), np.bincount(prob[0, :, ::2].ravel(), minlength=256))


def test_dice_histograms_checks_inputs() -> None:
    with pytest.raises(TypeError, match="uint8"):
        dice_histograms(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="same shape"):
        dice_histograms(np.zeros((2, 2), np.uint8), np.zeros((2, 3), bool))


def test_dice_by_level_matches_brute_force() -> None:
    probs, truths = _images()
    hists = np.stack([dice_histograms(p, t) for p, t in zip(probs, truths)])
    fast = dice_by_level(hists)
    assert fast.shape == (len(probs), 256)
    brute = np.array([[dice(p > k, t) for k in range(256)] for p, t in zip(probs, truths)])
    np.testing.assert_allclose(fast, brute, rtol=0, atol=1e-12)
    # the edge cases really are edge cases: empty-vs-empty scores 1, empty-vs-car 0
    # prob 255 everywhere, empty truth: the prediction is empty (Dice 1) only at level 255
    assert (fast[-1, :255] == 0.0).all() and fast[-1, 255] == 1.0
    assert (fast[-2] == 0.0).all()  # prob 0 everywhere: prediction always empty, truth not


def test_dice_by_level_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\(N, 2, 256\)"):
        dice_by_level(np.zeros((2, 256), np.int64))


def test_best_threshold_matches_brute_force() -> None:
    probs, truths = _images(seed=1)
    hists = np.stack([dice_histograms(p, t) for p, t in zip(probs, truths)])
    threshold, score, per_level = best_threshold(hists)
    assert 0.0 < threshold < 1.0 and per_level.shape == (256,)
    brute = {k: mean_dice([binarize(p, threshold_of(k)) for p in probs], truths) for k in range(1, 255)}
    best_level = max(brute, key=lambda k: (brute[k], -k))  # lowest level among ties
    assert level_of(threshold) == best_level
    assert score == pytest.approx(brute[best_level], abs=1e-12)
    for k in (1, 100, 254):
        assert per_level[k] == pytest.approx(brute[k], abs=1e-12)
    with pytest.raises(ValueError, match="at least one"):
        best_threshold(np.zeros((0, 2, 256), np.int64))


def test_every_threshold_keeps_exactly_the_levels_above_it() -> None:
    """A mask holds the pixels whose stored probability v / 255 is above the threshold, for any threshold in (0, 1):
    0.999 keeps the 1.0 pixels (it once kept none), 0.5 keeps 128 / 255."""
    levels = np.arange(256, dtype=np.uint8)
    rng = np.random.default_rng(0)
    for t in [1e-6, 0.001, 0.25, 0.5, 0.75, 0.999, 0.9999, 1 - 1e-9, *rng.uniform(0, 1, 500)]:
        assert np.array_equal(binarize(levels, t), levels / 255 > t), t
    assert binarize(levels, 0.999).sum() == 1
