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


def _shift(got: np.ndarray, want: np.ndarray, axis: int, full: int, period: float) -> float:
    """How far (network pixels) the sinusoid of ``period`` full-resolution pixels along ``axis`` lies in ``got``
    from where it lies in ``want``, over the far third of the axis (where a stretch is largest): the difference of
    the phases fitted to each, which blur does not move."""
    def phase(image: np.ndarray) -> float:
        profile = image.mean(axis=1 - axis).astype(float)
        n = profile.size
        c = np.arange(n * 2 // 3, n)
        u = 2 * np.pi * (c + 0.5) * (full / n) / period
        fit = np.linalg.lstsq(np.stack([np.ones_like(u), np.sin(u), np.cos(u)], 1), profile[c], rcond=None)[0]
        return np.arctan2(fit[2], fit[1])
    d = (phase(got) - phase(want) + np.pi) % (2 * np.pi) - np.pi
    return d / (2 * np.pi) * period / (full / got.shape[axis])


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("full, size", [((1280, 1918), (320, 448)), ((1280, 1918), (160, 224)),
                                        ((1001, 1503), (240, 352)), ((700, 1050), (320, 512))])
def test_a_photo_decoded_reduced_lines_up_with_its_mask(full, size, ext):
    """libjpeg rounds a reduced side up (1918 / 4 -> 480 columns spanning 1920), cv2 shrinks other formats to the
    side divided down (479): either way the photo at the network size must have that size and lie where the whole
    photo resized does (what its mask gets, ``to_net``), in the cache's decoder and the tiles' alike. Before, a JPEG
    of 1918 x 1280 at 448 x 320 lay 0.4 network pixels off at the far right."""
    import cv2
    from lib.photos import decode_to_net
    from lib.tiles import read_scaled, scaled_size
    (h0, w0), period = full, 96.0
    y, x = np.mgrid[:h0, :w0]
    wave = np.stack([127.5 + 120 * np.sin(2 * np.pi * x / period), 127.5 + 120 * np.sin(2 * np.pi * y / period),
                     np.full(x.shape, 128.0)], -1).astype(np.uint8)  # a wave across in blue, one down in green (BGR)
    encoded = cv2.imencode(ext, wave, [cv2.IMWRITE_JPEG_QUALITY, 100] if ext == ".jpg" else [])[1]
    whole = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    got = decode_to_net(encoded.tobytes(), "wave" + ext, full, *size)
    want = to_net(whole, *size)
    assert got.shape == want.shape == (*size, 3)
    assert abs(_shift(got[..., 2], want[..., 2], 1, w0, period)) < 0.05
    assert abs(_shift(got[..., 1], want[..., 1], 0, h0, period)) < 0.05
    scaled, _ = read_scaled(encoded.tobytes(), "wave" + ext, h0 / size[0])  # tiles: the photo at 1/downscale
    assert scaled.shape[:2] == scaled_size(h0, w0, h0 / size[0])
    want = cv2.resize(whole, scaled.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert abs(_shift(scaled[..., 2], want[..., 2], 1, w0, period)) < 0.05
    assert abs(_shift(scaled[..., 1], want[..., 1], 0, h0, period)) < 0.05
