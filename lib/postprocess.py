"""Mask post-processing chosen out-of-fold: keep only the largest region of a binary probability map.

A Carvana mask is one car: all 512 training masks of the sample are a single connected region. The models
sometimes paint a second, separate blob (a dark floor strip, a shadow at the edge of the photo); removing every
region but the largest fixes that whatever the training run learned. It works on the full-size uint8 map (after
``geometry.from_net``, before the threshold), so tuning's one-pass threshold search and 04_submit.py see the very
same maps. 03_predict.py keeps it only where it scores better on the out-of-fold images (``--postprocess auto``).
"""
from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

NONE, LARGEST = "none", "largest"
CHOICES = (NONE, LARGEST)
REGION_LEVEL = 127  # regions are those of the map above 0.5 (uint8 level 127: lib/metrics.py)
MARGIN = 0.01  # what stays around the largest region, as a fraction of the map's smaller side (13 px at 1280 rows)


def largest_region(prob_u8: NDArray[np.uint8], margin: float = MARGIN) -> NDArray[np.uint8]:
    """(H, W) uint8 map -> the same map with 0 wherever it is farther than ``margin * min(H, W)`` pixels (at least 1)
    from its largest 8-connected region above 0.5. The margin keeps the soft rim of that region, so any threshold
    near 0.5 gives the region whole; a map with at most one region comes back unchanged (the same array)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((prob_u8 > REGION_LEVEL).view(np.uint8), connectivity=8)
    if n <= 2:  # background and at most one region
        return prob_u8
    keep = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).view(np.uint8)
    r = max(1, round(margin * min(prob_u8.shape)))
    keep = cv2.dilate(keep, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1)))
    return np.where(keep.view(np.bool_), prob_u8, np.uint8(0))


def apply(name: str, prob_u8: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The map after post-processing ``name`` (one of CHOICES)."""
    if name == NONE:
        return prob_u8
    if name == LARGEST:
        return largest_region(prob_u8)
    raise ValueError(f"unknown post-processing {name!r}; one of {', '.join(CHOICES)}")
