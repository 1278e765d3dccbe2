"""The losses (``--loss``), always computed in float32 (also under mixed precision), built from smp's losses.

Each is ``pixel_weight * pixel term + region_weight * region term`` (``--bce-weight``, ``--dice-weight``):

| --loss | pixel term | region term |
|---|---|---|
| bce_dice (default) | BCE (binary) / cross-entropy (labels) | soft Dice |
| focal_dice | focal loss (gamma 2) | soft Dice |
| lovasz | BCE / cross-entropy | Lovasz hinge (binary) / Lovasz-softmax (labels) |
| tversky | BCE / cross-entropy | Tversky (alpha 0.3 on false positives, beta 0.7 on false negatives) |

A weight of 0 drops its term (``--loss lovasz --bce-weight 0``: Lovasz alone). The task (lib/task.py) picks the mode:
binary (logits (N, 1, H, W), soft target (N, 1, H, W) in [0, 1]), multiclass (logits (N, C, H, W), labels (N, H, W)
int64) or multilabel (``--multilabel``: logits (N, C, H, W), 0/1 target (N, C, H, W) float, one sigmoid per label;
the pixel term is BCE on every label). The Lovasz hinge is defined on 0/1 labels: a binary target is rounded for it
(soft only at object edges).
"""
from __future__ import annotations

import torch
from torch import nn

BINARY, MULTICLASS, MULTILABEL = "binary", "multiclass", "multilabel"  # smp's modes
CHOICES = ("bce_dice", "focal_dice", "lovasz", "tversky")
FOCAL_GAMMA = 2.0  # smp's default: the weight (1 - p_t) ** gamma of each pixel's term
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7  # false positives, false negatives; 0.5, 0.5 would be Dice


class Combined(nn.Module):
    """loss = pixel_weight * pixel(logits, target) + region_weight * region(logits, target), in float32.

    ``hard_region``: the region term sees a binary target rounded to 0/1 (the Lovasz hinge)."""

    def __init__(self, pixel: nn.Module, region: nn.Module, pixel_weight: float = 1.0, region_weight: float = 1.0,
                 hard_region: bool = False):
        super().__init__()
        self.pixel, self.region = pixel, region
        self.pixel_weight, self.region_weight, self.hard_region = pixel_weight, region_weight, hard_region

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.float() if target.is_floating_point() else target
        region_target = (target > 0.5).float() if self.hard_region and target.is_floating_point() else target
        return self.pixel_weight * self.pixel(logits, target) + self.region_weight * self.region(logits, region_target)


def make_loss(name: str, mode: str, pixel_weight: float = 1.0, region_weight: float = 1.0) -> Combined:
    """The loss ``name`` (one of CHOICES) for smp's ``mode`` (BINARY, MULTICLASS or MULTILABEL)."""
    from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss, TverskyLoss
    if mode not in (BINARY, MULTICLASS, MULTILABEL):
        raise ValueError(f"unknown loss mode {mode!r}; one of {BINARY}, {MULTICLASS}, {MULTILABEL}")
    pixel: nn.Module = nn.CrossEntropyLoss() if mode == MULTICLASS else nn.BCEWithLogitsLoss()
    if name == "bce_dice":
        return Combined(pixel, DiceLoss(mode=mode, from_logits=True), pixel_weight, region_weight)
    if name == "focal_dice":
        return Combined(FocalLoss(mode=mode, gamma=FOCAL_GAMMA), DiceLoss(mode=mode, from_logits=True),
                        pixel_weight, region_weight)
    if name == "lovasz":
        return Combined(pixel, LovaszLoss(mode=mode, per_image=False, from_logits=True), pixel_weight, region_weight,
                        hard_region=mode == BINARY)
    if name == "tversky":
        return Combined(pixel, TverskyLoss(mode=mode, from_logits=True, alpha=TVERSKY_ALPHA, beta=TVERSKY_BETA),
                        pixel_weight, region_weight)
    raise ValueError(f"unknown loss {name!r}; one of {', '.join(CHOICES)}")


def BceDice(bce_weight: float = 1.0, dice_weight: float = 1.0) -> Combined:
    """BCE + soft Dice on binary masks (the default loss; benchmarks build it by this name)."""
    return make_loss("bce_dice", BINARY, bce_weight, dice_weight)
