"""Blending prediction folders: their maps averaged with weights, and the threshold and post-processing of the blend.

The decision of one image (maps -> mask or labels) is ``Task.decide_maps``; it calls ``ensemble_mask`` (binary) or
``ensemble_labels`` (multi-class), which 03 --images and 04 share, so a photo's mask, a submission row and the
out-of-fold score come from the same functions.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from lib import files, postprocess
from lib.geometry import from_net
from lib.metrics import binarize, gate, level_of
from lib.oof import at_size
from lib.task import Task
from lib.testmaps import Prediction


def blend(maps: Sequence[NDArray[np.uint8]], weights: Sequence[float]) -> NDArray[np.uint8]:
    """Weighted average of equally shaped uint8 maps, rounded to uint8 (half to even).

    maps: k arrays (H, W) uint8; weights: k floats summing to 1. One map is returned as is.
    """
    if len(maps) != len(weights) or not maps:
        raise ValueError(f"blend needs as many weights as maps, got {len(maps)} maps and {len(weights)} weights")
    if len(maps) == 1:
        return maps[0]
    acc = np.multiply(maps[0], np.float32(weights[0]), dtype=np.float32)
    for m, w in zip(maps[1:], weights[1:]):
        acc += np.multiply(m, np.float32(w), dtype=np.float32)
    np.rint(acc, out=acc)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8)


def ensemble_mask(maps: Sequence[NDArray[np.uint8]], weights: Sequence[float], orig_size: tuple[int, int],
                  threshold: float, post: str = postprocess.NONE, min_area: float = 0.0) -> NDArray[np.bool_]:
    """Network-size maps (each (h_i, w_i) uint8) -> (H0, W0) bool mask: from_net each, blend, post-process
    (lib/postprocess.py), binarize, empty it when smaller than ``min_area`` of the image (``metrics.gate``)."""
    h0, w0 = orig_size
    blended = np.ascontiguousarray(blend([from_net(m, h0, w0) for m in maps], weights))
    return gate(binarize(postprocess.apply(post, blended), threshold), min_area)


def ensemble_labels(maps: Sequence[NDArray[np.uint8]], weights: Sequence[float], orig_size: tuple[int, int],
                    task: Task, min_area: float | Sequence[float] = 0.0) -> NDArray[np.uint8]:
    """Multi-class network-size maps (each (C * h_i, w_i) uint8) -> (H0, W0) uint8 labels: each class map brought
    to the image's size, blended over the folders, argmax, each class 1..C-1 smaller than its ``min_area`` of the
    image made background (``Task.gate_classes``)."""
    return task.decide(blended_maps(maps, weights, orig_size, task), 0, min_area=min_area)


def blended_maps(maps: Sequence[NDArray[np.uint8]], weights: Sequence[float], orig_size: tuple[int, int],
                 task: Task) -> NDArray[np.uint8]:
    """Network-size maps of several folders (each (C * h_i, w_i) uint8) -> (C, H0, W0) uint8: each class or label
    map brought to the image's size and blended over the folders."""
    h0, w0 = orig_size
    per_folder = [at_size(m, task, h0, w0) for m in maps]  # each (C, H0, W0)
    return np.stack([blend([f[c] for f in per_folder], weights) for c in range(task.classes)])


def ensemble_threshold(preds: Sequence[Prediction], override: float = 0.0) -> tuple[float, str]:
    """(threshold, where it came from): ``override`` when non-zero, else the weighted mean of the tuned ones."""
    if override:
        level_of(override)  # raises for a threshold outside (0, 1)
        return float(override), "--threshold"
    if len(preds) == 1:
        return float(preds[0].tuning.threshold), f"tuned out-of-fold ({preds[0].folder / files.TUNING})"
    mean = float(sum(p.weight * p.tuning.threshold for p in preds))
    return mean, "weighted mean of the folders' tuned thresholds (the ensemble itself was not tuned)"


def ensemble_label_decision(preds: Sequence[Prediction], override: float = 0.0
                            ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A multi-label or multi-class task's (threshold of each label, minimum area of each scored class): the
    thresholds (multi-label; none for the argmax of the classes) are ``override`` for every label when non-zero, else
    the weighted mean of the folders' tuned thresholds; the minimum areas are the tuned ones where every folder
    agrees, else none (0). None for binary masks (``ensemble_threshold`` and ``ensemble_min_area`` decide them)."""
    task = preds[0].task
    if task.binary:
        return None
    scored = len(task.scored)
    zeros = (0.0,) * scored
    if not task.multilabel:
        thresholds: tuple[float, ...] = ()
    elif override:
        level_of(override)
        thresholds = (float(override),) * task.classes
    else:
        thresholds = tuple(float(t) for t in sum(p.weight * np.broadcast_to(p.tuning.decision_threshold, task.classes)
                                                 for p in preds))
    areas = {tuple(np.broadcast_to(p.tuning.decision_min_area, scored).tolist()) for p in preds}
    return thresholds, areas.pop() if len(areas) == 1 else zeros


def ensemble_postprocess(preds: Sequence[Prediction], override: str = "auto") -> tuple[str, str]:
    """(post-processing, where it came from): ``override`` unless it is auto, else the tuned one where every folder
    agrees, else none. A task whose decisions are not post-processed (labels) gets none."""
    if not preds[0].task.postprocessed:
        return postprocess.NONE, "labels are not post-processed"
    if override != "auto":
        return override, "--postprocess"
    tuned = {p.tuning.postprocess for p in preds}
    if len(tuned) == 1:
        return tuned.pop(), "tuned out-of-fold"
    return postprocess.NONE, "the folders' tunings disagree"


def ensemble_min_area(preds: Sequence[Prediction]) -> tuple[float, str]:
    """(minimum area of a mask as a fraction of its image, where it came from): the tuned one where every folder
    agrees (0, no gating, on a set without empty images), else 0."""
    tuned = {p.tuning.min_area for p in preds}
    if len(tuned) == 1:
        return tuned.pop(), "tuned out-of-fold"
    return 0.0, "the folders' tunings disagree: no gating"
