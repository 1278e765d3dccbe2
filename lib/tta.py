"""Test-time augmentation as augment / de-augment pairs on (N, C, H, W) tensors.

A mode is a list of pairs; the prediction is the mean of the de-augmented probabilities.
Horizontal flip is what helped the Carvana winners (+0.00003 .. +0.0001 Dice); a car photo is
not symmetric up/down, so vertical flips are not offered.
"""
from __future__ import annotations

from typing import Callable

import torch

from lib.task import Task

Pair = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


MODES: dict[str, list[Pair]] = {
    "none": [(_identity, _identity)],
    "hflip": [(_identity, _identity), (_hflip, _hflip)],
}


def predict_proba(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str,
                  task: Task) -> torch.Tensor:
    """Mean probability (N, channels, H, W) float32 over the mode's augmentations (sigmoid for binary masks,
    softmax over the classes for labels: ``task.probabilities``)."""
    pairs = MODES[mode]
    total = None
    for augment, deaugment in pairs:
        prob = deaugment(task.probabilities(model(augment(images))))
        total = prob if total is None else total + prob
    return total / len(pairs)
