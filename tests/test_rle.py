"""lib.rle: official prefixes on the real masks, equality with the canonical encoder, round trips, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib import parallel, rle

# Official train_masks.csv prefixes (CARVANA.md), the trailing "..." stripped.
OFFICIAL_PREFIXES = {
    "00087a6bd4dc_01": "879386 40 881253 141 883140 205 885009 17",
    "00087a6bd4dc_02": "873779 4 875695 7 877612 9 879528 12 881267 15",
    "00087a6bd4dc_03": "864300 9 866217 13 868134 15 870051 16 871969",
    "00087a6bd4dc_04": "879735 20 881650 26 883315 92 883564 30 885208",
    "00087a6bd4dc_05": "883365 74 883638 28",
}


def canonical_encode(mask: np.ndarray) -> str:
    """The well-known Kaggle encoder, as the reference: pad with 0, np.where on changes."""
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def load_mask(path: Path) -> np.ndarray:
    """(1280, 1918) uint8 {0, 1} mask from a Carvana GIF."""
    return np.array(Image.open(path))


@pytest.mark.parametrize("image_id", sorted(OFFICIAL_PREFIXES))
def test_official_prefixes(carvana_sample: Path, image_id: str) -> None:
    mask = load_mask(carvana_sample / "train_masks" / f"{image_id}_mask.gif")
    assert mask.shape == (1280, 1918) and set(np.unique(mask)) == {0, 1}
    # Plain startswith: the listed prefixes are cut as text, mid-number at times ("... 881267 15"
    # of "... 881267 151 881445 ...").
    assert rle.encode(mask).startswith(OFFICIAL_PREFIXES[image_id])


def _check_real_mask(path: Path) -> str | None:
    """Return a problem description for one real mask, or None when all checks pass."""
    mask = load_mask(path)
    ours = rle.encode(mask)
    if ours != canonical_encode(mask):
        return f"{path.name}: encode differs from the canonical encoder"
    if not np.array_equal(rle.decode(ours, mask.shape).view(np.uint8), mask):  # mask is {0, 1}
        return f"{path.name}: decode(encode(mask)) != mask"
    return None


def test_matches_canonical_on_all_real_masks(carvana_sample: Path) -> None:
    paths = sorted((carvana_sample / "train_masks").glob("*_mask.gif"))
    assert paths, f"no *_mask.gif in {carvana_sample / 'train_masks'}"
    with parallel.ordered(_check_real_mask, paths, 8, chunksize=8) as results:
        problems = [p for p in results if p]
    assert not problems, f"{len(problems)} of {len(paths)} masks fail, e.g. {problems[:3]}"


# ---- pinned values -------------------------------------------------------------------------------


def test_full_mask() -> None:
    assert rle.encode(np.ones((3, 5), bool)) == "1 15"


def test_empty_mask() -> None:
    assert rle.encode(np.zeros((3, 5), bool)) == ""
    assert not rle.decode("", (3, 5)).any()


def test_row_major_order() -> None:
    mask = np.zeros((2, 3), bool)
    mask[1, 0] = True  # row 1, col 0 -> index 1 * 3 + 0 + 1 = 4 (column-major would give 2)
    assert rle.encode(mask) == "4 1"
    assert rle.encode(np.array([[0, 1, 1, 0, 1]])) == "2 2 5 1"


def test_decode_pinned() -> None:
    expected = np.array([[0, 1, 1], [0, 1, 0]], bool)
    np.testing.assert_array_equal(rle.decode("2 2 5 1", (2, 3)), expected)


# ---- round trips ---------------------------------------------------------------------------------

ODD_SHAPES = [(1, 1), (1, 7), (7, 1), (3, 5), (9, 8), (17, 31), (64, 63), (129, 257)]


def _random_masks(shape: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Masks covering the edge cases: dense/sparse noise, blobs, corners, first/last pixel, empty, full."""
    rng = np.random.default_rng(seed)
    h, w = shape
    masks = [rng.random(shape) < p for p in (0.05, 0.5, 0.95)]
    blob = np.zeros(shape, bool)
    blob[h // 4 : 3 * h // 4 + 1, w // 4 : 3 * w // 4 + 1] = True
    masks.append(blob)
    corners = rng.random(shape) < 0.3
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    masks.append(corners)
    for index in (0, h * w - 1):
        one = np.zeros(h * w, bool)
        one[index] = True
        masks.append(one.reshape(shape))
    checker = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
    masks += [checker, ~checker, np.zeros(shape, bool), np.ones(shape, bool)]
    return masks


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_round_trip_and_canonical(shape: tuple[int, int]) -> None:
    for i, mask in enumerate(_random_masks(shape, seed=shape[0] * 1000 + shape[1])):
        code = rle.encode(mask)
        assert code == canonical_encode(mask.astype(np.uint8)), f"mask {i}"
        rle.validate(code, shape)
        decoded = rle.decode(code, shape)
        assert decoded.dtype == np.bool_ and decoded.shape == shape
        np.testing.assert_array_equal(decoded, mask, err_msg=f"mask {i}")


def test_first_and_last_pixel() -> None:
    mask = np.zeros((4, 6), bool)
    mask[0, 0] = mask[-1, -1] = True
    assert rle.encode(mask) == "1 1 24 1"


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.astype(np.uint8),
        lambda m: m.astype(np.uint8) * 255,
        lambda m: np.where(m, np.arange(m.size).reshape(m.shape) % 255 + 1, 0).astype(np.uint8),
        lambda m: m.astype(np.int8) * -1,
        lambda m: m.astype(np.int64) * 7,
        lambda m: m.astype(np.float32) * 0.5,
        lambda m: np.asfortranarray(m),
        lambda m: np.ascontiguousarray(m.T).T,  # same logical mask, column-major memory
    ],
    ids=["uint8", "uint8_255", "uint8_varied", "int8_neg", "int64", "float32", "fortran", "transposed_view"],
)
def test_dtypes_and_layouts_encode_the_same(convert) -> None:
    mask = np.random.default_rng(3).random((37, 53)) < 0.5
    assert rle.encode(convert(mask)) == rle.encode(mask)


@pytest.mark.parametrize("shape", [(0, 5), (5,), (2, 3, 4)])
def test_encode_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        rle.encode(np.zeros(shape, bool))


# ---- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("1 2 x 1", "token 2"),
        ("1.5 2", "token 0"),
        ("1 -2", "token 1"),
        ("1  2", "empty token"),
        (" 1 2", "empty token"),
        ("1 2 ", "empty token"),
        ("1 2 4", "odd count"),
        ("0 2", "start 0 < 1"),
        ("1 0", "length 0 < 1"),
        ("5 2 1 1", "increasing"),  # not increasing
        ("1 3 2 1", "overlap"),  # overlapping
        ("1 2 3 1", "touch"),  # touching: run 1 ends at 2, run 2 starts at 3
        ("14 3", "beyond the 15 pixels"),
        ("16 1", "beyond the 15 pixels"),
        ("1 99999999999999999999999", "too large"),
    ],
)
def test_validate_rejects(code: str, message: str) -> None:
    shape = (3, 5)
    with pytest.raises(ValueError) as err:
        rle.validate(code, shape)
    assert any(word in str(err.value) for word in message.split("/")), str(err.value)
    assert not rle.is_valid(code, shape)
    with pytest.raises(ValueError):
        rle.decode(code, shape)


@pytest.mark.parametrize("code", ["", "1 15", "1 1 15 1", "2 3 6 1 13 3"])
def test_validate_accepts(code: str) -> None:
    rle.validate(code, (3, 5))
    assert rle.is_valid(code, (3, 5))


def test_validate_rejects_bad_shape_and_type() -> None:
    with pytest.raises(ValueError, match="shape"):
        rle.validate("1 1", (0, 5))
    with pytest.raises(TypeError):
        rle.validate(float("nan"), (3, 5))  # type: ignore[arg-type]
