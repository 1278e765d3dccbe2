"""Pad/crop and resize between the original size and the network size; TTA round trips."""
import numpy as np
import pytest
import torch

from lib import tta
from lib.geometry import ORIG_H, ORIG_W, from_net, padded_size, padding, to_net
from lib.task import BINARY


def test_carvana_full_resolution_pads_one_pixel_each_side():
    assert padded_size(ORIG_H, ORIG_W) == (1280, 1920)
    assert padding(ORIG_H, ORIG_W) == (0, 0, 1, 1)


@pytest.mark.parametrize("shape", [(1280, 1918), (160, 240), (37, 61)])
def test_pad_then_crop_is_identity(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, shape, dtype=np.uint8)
    net = to_net(img, *padded_size(*shape))
    assert net.shape == padded_size(*shape)
    assert np.array_equal(from_net(net, *shape), img)


def test_resize_path_keeps_constant_maps_and_shapes():
    prob = np.full((128, 192), 200, np.uint8)
    assert from_net(prob, 1280, 1918).shape == (1280, 1918)
    assert (from_net(prob, 1280, 1918) == 200).all()
    img = np.zeros((1280, 1918, 3), np.uint8)
    assert to_net(img, 128, 192).shape == (128, 192, 3)


def test_tta_deaugment_inverts_augment():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    for pairs in tta.MODES.values():
        for augment, deaugment in pairs:
            assert torch.equal(deaugment(augment(x)), x)


def test_tta_of_a_flip_equivariant_model_equals_plain():
    def model(x):  # logits symmetric under hflip
        return x[:, :1] + x[:, :1].flip(-1)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(tta.predict_proba(model, x, "hflip", BINARY), tta.predict_proba(model, x, "none", BINARY))


def test_tta_hflip_averages_the_flipped_prediction():
    def model(x):  # not symmetric: depends on the column
        return torch.linspace(-3, 3, x.shape[-1]).expand(x.shape[0], 1, x.shape[2], x.shape[3])
    x = torch.zeros(1, 3, 4, 6)
    prob = tta.predict_proba(model, x, "hflip", BINARY)
    assert torch.allclose(prob, torch.full_like(prob, 0.5), atol=1e-6)
