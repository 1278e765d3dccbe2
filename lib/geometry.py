"""Image sizes and the one mapping between the original size and the network's input size.

At full resolution the image is padded up to multiples of 32 (Carvana: 1918 -> 1920, 1 px each
side) and cropped back; at any other size it is resized. ``to_net`` and ``from_net`` are each
other's inverse and serve training, validation, inference and submission alike.
"""
from __future__ import annotations

import cv2
import numpy as np

ORIG_H, ORIG_W = 1280, 1918  # Kaggle Carvana images and masks (H x W)
STRIDE = 32  # the UNet's total downsampling: network sizes are multiples of it


def padded_size(height: int, width: int) -> tuple[int, int]:
    """Smallest (H, W) >= (height, width) dividing by STRIDE: (1280, 1918) -> (1280, 1920)."""
    return -(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE


def padding(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixels added by ``to_net`` at full resolution."""
    ph, pw = padded_size(height, width)
    top, left = (ph - height) // 2, (pw - width) // 2
    return top, ph - height - top, left, pw - width - left


def to_net(image: np.ndarray, height: int, width: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """(H0, W0[, C]) original -> (height, width[, C]): reflect-pad at full resolution, else resize."""
    h0, w0 = image.shape[:2]
    if (height, width) == padded_size(h0, w0):
        return cv2.copyMakeBorder(image, *padding(h0, w0), cv2.BORDER_REFLECT_101)
    if (height, width) == (h0, w0):
        return image
    return cv2.resize(image, (width, height), interpolation=interpolation)


def from_net(prob: np.ndarray, height: int = ORIG_H, width: int = ORIG_W) -> np.ndarray:
    """(h, w) network-size map -> (height, width) original size: crop the padding, or bilinear resize."""
    if prob.shape[:2] == padded_size(height, width):
        top, bottom, left, right = padding(height, width)
        return prob[top:prob.shape[0] - bottom, left:prob.shape[1] - right]
    if prob.shape[:2] == (height, width):
        return prob
    return cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)


# libjpeg's DCT scaling (cv2.IMREAD_REDUCED_*): a JPEG decoded at 1/8, 1/4 or 1/2 of its size, several times faster
REDUCED_DECODE = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def from_reduced(image: np.ndarray, factor: int, full: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """``image``, a photo of ``full`` (H0, W0) pixels decoded reduced by ``factor`` (cv2.IMREAD_REDUCED_*), at (h, w)
    ``size``: each pixel the mean of the full-resolution span it covers, as INTER_AREA from the whole photo (and
    ``to_net``, which masks take) would give. libjpeg rounds a reduced side up (1918 columns by 4 are 480, the last
    only 2 pixels wide), so resizing that photo to ``size`` as if every pixel were ``factor`` wide would stretch it
    against its mask by up to ``factor`` - 1 pixels at the far edge (half a network pixel at 448 wide); other formats
    cv2 decodes whole and shrinks to the side divided down (479), which spans the whole photo."""
    (h0, w0), (h, w) = full, size
    rows, cols = image.shape[:2]
    # the reduced pixels each side really spans: a side rounded up ends in a partial pixel
    span_y = h0 / factor if rows == -(-h0 // factor) else rows
    span_x = w0 / factor if cols == -(-w0 // factor) else cols
    if (span_y, span_x) == (rows, cols):  # every reduced pixel whole: the plain resize is exact
        return image if (rows, cols) == (h, w) else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    sx, sy = span_x / w, span_y / h  # reduced pixels an output pixel spans
    if (rows, cols) == (h, w):  # an enlargement cv2.resize would return unchanged whatever the scale: sample instead
        to_source = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])
        return cv2.warpAffine(image, to_source, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
    # INTER_AREA weighs the last, partial pixel by the span it covers; the size comes out (h, w) or one more, cut
    out = cv2.resize(image, None, fx=1 / sx, fy=1 / sy, interpolation=cv2.INTER_AREA)
    return out[:h, :w]
