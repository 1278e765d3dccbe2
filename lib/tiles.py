"""Sliding-window prediction over images larger than the network's input: the tile grid, the blending weights and the
stitching of tile probabilities into one map.

An image (at the network's scale, i.e. after ``--downscale``) is covered by windows of ``tile`` x ``tile`` pixels whose
starts are spread evenly so that neighbours overlap by at least ``overlap`` of a tile and the last window ends at the
image's edge. Each window's probabilities are weighted by a Gaussian that is highest at the tile's centre (a
convolutional network sees least context at a tile's border, so its border predictions are the least reliable) and
the weighted sum is divided by the summed weights. An axis shorter than the tile gets one window: the image is
reflect-padded to the next multiple of 32 on that axis (``geometry.padding``, the padding whole-image prediction
uses) and cropped back, so with ``tile`` at least the image's padded size a tiled prediction is the whole-image one.

Memory: the stitched map is a float32 (C, H, W) sum plus an (H, W) weight sum at the network scale; the network only
ever holds ``batch`` tiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

from lib.errors import PipelineError
from lib.geometry import REDUCED_DECODE, STRIDE, from_reduced, padded_size, padding

# Standard deviation of the blending Gaussian as a fraction of the tile side (nnU-Net's choice of 1/8: the centre
# weighs about 3000 times a corner, so a border pixel counts only where no other tile covers it better).
SIGMA_FRACTION = 1 / 8
# Smallest blending weight relative to the largest: no pixel's weight is 0, so every covered pixel is defined.
MIN_WEIGHT = 1e-3

TilePredictor = Callable[[np.ndarray], np.ndarray]  # (N, th, tw, 3) uint8 tiles -> (N, C, th, tw) float32


def scaled_size(height: int, width: int, downscale: float) -> tuple[int, int]:
    """(H, W) of an image of ``height`` x ``width`` at the network's scale, ``downscale`` times smaller (at least 1)."""
    return max(1, round(height / downscale)), max(1, round(width / downscale))


@dataclass(frozen=True)
class Tiling:
    """How a run's maps are made by sliding window (--tile-size, --downscale, --tile-overlap): tuning.json and
    test_probs/meta.json record it, so that maps of other tiling settings are predicted again, and each stored map is
    at its image's size at the network's scale (``map_hw``), not at --height x --width."""
    tile: int  # tile side at the network's scale, a multiple of 32
    downscale: float  # the image is shrunk by this factor (1 = its own resolution)
    overlap: float  # neighbouring tiles share at least this fraction of a tile

    @classmethod
    def of(cls, p) -> "Tiling | None":
        """The tiling Params ``p`` ask for; None with --tile-size 0 (whole images at --height x --width)."""
        return cls(p.tile_size, float(p.downscale), float(p.tile_overlap)) if p.tile_size else None

    def record(self) -> dict:
        return {"tile_size": self.tile, "downscale": self.downscale, "tile_overlap": self.overlap}

    @classmethod
    def from_record(cls, record: dict | None) -> "Tiling | None":
        """The inverse of ``record``; None for {} or None (whole-image maps); ValueError for another dict."""
        if not record:
            return None
        try:
            tile, downscale, overlap = int(record["tile_size"]), float(record["downscale"]), float(record["tile_overlap"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tiling {record} is not {{tile_size, downscale, tile_overlap}}") from None
        if tile <= 0 or tile % STRIDE or downscale < 1 or not 0 <= overlap <= 0.5:
            raise ValueError(f"tiling {record} is out of range")
        return cls(tile, downscale, overlap)

    def map_hw(self, orig: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the stored map of an image of ``orig`` (H0, W0): its size at the network's scale."""
        return scaled_size(int(orig[0]), int(orig[1]), self.downscale)

    def describe(self) -> str:
        return f"tiles of {self.tile} px, overlap {self.overlap:g}, downscale {self.downscale:g}"


def starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window starts along one axis of ``length`` pixels with windows of ``tile`` (<= length): the first at 0, the
    last at ``length - tile``, evenly spread so that neighbours share at least ``overlap`` of a tile.

    (1000, 256, 0.25) -> [0, 186, 372, 558, 744]: 5 windows, each step 186 <= 192 = 256 * (1 - 0.25)."""
    if tile > length:
        raise ValueError(f"tile {tile} is longer than the axis {length}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap {overlap} must be in [0, 1)")
    if tile == length:
        return [0]
    step = max(1, math.floor(tile * (1 - overlap)))
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_shape(height: int, width: int, tile: int) -> tuple[int, int]:
    """(th, tw) of the windows over an ``height`` x ``width`` image: ``tile`` along an axis at least that long, else
    the axis padded up to a multiple of 32 (one window)."""
    ph, pw = padded_size(height, width)
    return (tile if height >= tile else min(tile, ph)), (tile if width >= tile else min(tile, pw))


def windows(height: int, width: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    """(top, left) of every window over the image after ``pad_for_tiles``, row by row."""
    ph, pw = padded_shape(height, width, tile)
    th, tw = tile_shape(height, width, tile)
    return [(y, x) for y in starts(ph, th, overlap) for x in starts(pw, tw, overlap)]


def padded_shape(height: int, width: int, tile: int) -> tuple[int, int]:
    """(H, W) after ``pad_for_tiles``: an axis shorter than ``tile`` padded to a multiple of 32, others as they are."""
    ph, pw = padded_size(height, width)
    return (height if height >= tile else ph), (width if width >= tile else pw)


def pad_for_tiles(image: np.ndarray, tile: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W[, C]) image -> (the image reflect-padded on each axis shorter than ``tile`` as whole-image prediction
    pads it, (top, left) of the original inside it)."""
    h, w = image.shape[:2]
    top, bottom, left, right = padding(h, w)
    if h >= tile:
        top = bottom = 0
    if w >= tile:
        left = right = 0
    if top == bottom == left == right == 0:
        return image, (0, 0)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REFLECT_101), (top, left)


def gaussian_weights(th: int, tw: int) -> np.ndarray:
    """(th, tw) float32 blending weights: a Gaussian centred on the tile, sigma ``SIGMA_FRACTION`` of each side,
    scaled to a maximum of 1 and floored at ``MIN_WEIGHT``."""
    def axis(n: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        return np.exp(-0.5 * (x / (n * SIGMA_FRACTION)) ** 2)
    w = np.outer(axis(th), axis(tw))
    return np.maximum(w / w.max(), MIN_WEIGHT).astype(np.float32)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def sliding_window(predict: TilePredictor, image: np.ndarray, tile: int, overlap: float, batch: int) -> np.ndarray:
    """(H, W, 3) uint8 image at the network's scale -> (C, H, W) float32 probabilities, predicted ``batch`` tiles at a
    time by ``predict`` over windows of ``tile`` (a multiple of 32) overlapping by ``overlap`` and blended with
    ``gaussian_weights``."""
    if tile <= 0 or tile % STRIDE:
        raise ValueError(f"tile {tile} must be a positive multiple of {STRIDE}")
    h, w = image.shape[:2]
    padded, (top, left) = pad_for_tiles(image, tile)
    ph, pw = padded.shape[:2]
    th, tw = tile_shape(h, w, tile)
    weight = gaussian_weights(th, tw)
    total = None
    weight_sum = np.zeros((ph, pw), np.float32)
    for group in _batches(windows(h, w, tile, overlap), batch):
        tiles = np.stack([padded[y:y + th, x:x + tw] for y, x in group])
        probs = np.asarray(predict(tiles), dtype=np.float32)
        if probs.shape[0] != len(group) or probs.shape[2:] != (th, tw):
            raise ValueError(f"the tile predictor returned {probs.shape} for {len(group)} tiles of {th} x {tw}")
        if total is None:
            total = np.zeros((probs.shape[1], ph, pw), np.float32)
        for (y, x), prob in zip(group, probs):
            total[:, y:y + th, x:x + tw] += prob * weight
            weight_sum[y:y + th, x:x + tw] += weight
    total /= weight_sum
    return total[:, top:top + h, left:left + w]


def read_scaled(raw: bytes, path, downscale: float) -> tuple[np.ndarray, tuple[int, int]]:
    """(the (H, W, 3) RGB uint8 image at the network's scale, its original (H0, W0)) of the encoded image ``raw``
    read from ``path``: decoded at 1/2, 1/4 or 1/8 scale where ``downscale`` allows (libjpeg's DCT scaling: a 70 MP
    photo at --downscale 4 never exists at full size in memory), then resized to ``scaled_size``."""
    from lib.inputs import image_size  # PIL: not for the torch-free predictor, which imports this module's Tiling
    h0, w0 = image_size(raw, path)
    h, w = scaled_size(h0, w0, downscale)
    flag, factor = cv2.IMREAD_COLOR, 1
    for k, reduced in REDUCED_DECODE:
        if downscale >= k:
            flag, factor = reduced, k
            break
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise PipelineError(f"{path}: not a readable image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return from_reduced(image, factor, (h0, w0), (h, w)), (h0, w0)  # in line with the mask (area from full size)
