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
