"""Sliding-window prediction (lib/tiles.py): the grid, the blending weights, and tiled against whole-image
prediction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lib import geometry, tiles
from lib.model import build_model
from lib.predict import Ensemble, predict_probabilities, tile_predictor
from lib.runtime import Precision
from lib.task import Task
from params import make_params


@pytest.mark.parametrize("length,tile,overlap", [(1000, 256, 0.25), (257, 256, 0.5), (4000, 512, 0.0),
                                                 (640, 128, 0.5), (96, 96, 0.3)])
def test_starts_cover_the_axis_with_the_overlap(length, tile, overlap):
    s = tiles.starts(length, tile, overlap)
    assert s[0] == 0 and s[-1] == length - tile
    steps = np.diff(s)
    assert (steps > 0).all() and (steps <= tile * (1 - overlap)).all()
    covered = np.zeros(length, bool)
    for x in s:
        covered[x:x + tile] = True
    assert covered.all()


def test_starts_pinned():
    assert tiles.starts(1000, 256, 0.25) == [0, 186, 372, 558, 744]
    assert tiles.starts(512, 256, 0.0) == [0, 256]
    with pytest.raises(ValueError):
        tiles.starts(100, 128, 0.25)


def test_gaussian_weights_peak_in_the_centre_and_never_vanish():
    w = tiles.gaussian_weights(64, 96)
    assert w.shape == (64, 96) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0, abs=1e-6) and w.min() >= tiles.MIN_WEIGHT
    assert np.allclose(w, w[::-1]) and np.allclose(w, w[:, ::-1])
    assert w[32, 48] > w[32, 70] > w[32, 95]


def test_small_axes_are_padded_like_whole_images():
    assert tiles.tile_shape(100, 1000, 256) == (128, 256)
    assert tiles.padded_shape(100, 1000, 256) == (128, 1000)
    image = np.arange(100 * 150 * 3, dtype=np.uint8).reshape(100, 150, 3)
    padded, (top, left) = tiles.pad_for_tiles(image, 256)
    assert padded.shape == (128, 160, 3)
    assert np.array_equal(padded, geometry.to_net(image, 128, 160))
    assert np.array_equal(padded[top:top + 100, left:left + 150], image)


def test_a_pixelwise_predictor_is_stitched_exactly():
    """A predictor that looks at each pixel alone gives the same value whatever tile covers it: any error in the grid,
    the weights or the crop shows."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 530, 3), dtype=np.uint8)

    def per_pixel(batch: np.ndarray) -> np.ndarray:
        return batch.transpose(0, 3, 1, 2).astype(np.float32) / 255

    out = tiles.sliding_window(per_pixel, image, 128, 0.25, batch=5)
    assert out.shape == (3, 300, 530) and out.dtype == np.float32
    assert np.allclose(out, image.transpose(2, 0, 1) / 255, atol=1e-6)


def test_a_tile_that_is_not_a_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        tiles.sliding_window(lambda b: b, np.zeros((64, 64, 3), np.uint8), 100, 0.25, 4)


def _ensemble(classes: int) -> Ensemble:
    torch.manual_seed(0)
    p = make_params(encoder="resnet18", encoder_weights="none", decoder_channels="32,16,16,16,16", classes=classes,
                    height=128, width=160)
    model = build_model(p).eval()
    return Ensemble([model], [0], [{}], p, torch.device("cpu"), Precision.for_device(torch.device("cpu"), "off"),
                    Task.of(p), channels_last=False)


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("tile", [160, 256])
def test_tiled_and_whole_image_prediction_agree(classes, tile):
    """With --tile-size at least the image's size the sliding window is one window over the image padded as
    whole-image prediction pads it, so the two give the same maps (binary and multi-class, with TTA)."""
    torch.set_num_threads(1)
    ens = _ensemble(classes)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)  # network size 128 x 160
    net = geometry.to_net(image, 128, 160)
    whole = predict_probabilities(ens, torch.from_numpy(net).permute(2, 0, 1)[None], "hflip")[0].numpy()
    whole = np.stack([geometry.from_net(c, 100, 150) for c in whole])
    tiled = tiles.sliding_window(tile_predictor(ens, "hflip"), image, tile, 0.25, batch=2)
    assert tiled.shape == whole.shape == (ens.task.channels, 100, 150)
    assert np.abs(tiled - whole).max() < 1e-5


def test_overlapping_tiles_stay_close_to_the_whole_image():
    """Smaller overlapping tiles see less context, so they differ from the whole image, but blended they stay close
    (an error in placement would give differences of the order of the maps themselves)."""
    torch.set_num_threads(1)
    ens = _ensemble(1)
    yy, xx = np.mgrid[0:192, 0:256]
    image = np.stack([(xx % 64) * 4, (yy % 48) * 5, (xx + yy) % 256], axis=-1).astype(np.uint8)
    whole = predict_probabilities(ens, torch.from_numpy(image).permute(2, 0, 1)[None], "none")[0].numpy()
    tiled = tiles.sliding_window(tile_predictor(ens, "none"), image, 128, 0.5, batch=4)
    shifted = np.roll(whole, 16, axis=-1)
    assert np.abs(tiled - whole).mean() < 0.5 * np.abs(shifted - whole).mean()
