"""The losses, always computed in float32 (also under mixed precision): BCE + soft Dice for binary masks,
cross-entropy + soft Dice for labels (lib/task.py picks)."""
from __future__ import annotations

import torch
from torch import nn


class BceDice(nn.Module):
    """loss = bce_weight * BCE(logits, target) + dice_weight * (1 - soft Dice).

    logits, target: (N, 1, H, W); target in [0, 1] (soft at object edges after downscaling).
    The Dice term is smp's DiceLoss (binary mode, per batch).
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.bce = nn.BCEWithLogitsLoss()
        self.dice = DiceLoss(mode="binary", from_logits=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        return self.bce_weight * self.bce(logits, target) + self.dice_weight * self.dice(logits, target)


class CeDice(nn.Module):
    """loss = ce_weight * cross-entropy(logits, labels) + dice_weight * (1 - soft Dice over the classes).

    logits: (N, C, H, W); labels: (N, H, W) int64 in 0..C-1. The Dice term is smp's DiceLoss (multiclass mode:
    softmax, Dice of each class present in the batch, averaged).
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss
        self.ce_weight, self.dice_weight = ce_weight, dice_weight
        self.ce = nn.CrossEntropyLoss()
        self.dice = DiceLoss(mode="multiclass", from_logits=True)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return self.ce_weight * self.ce(logits, labels) + self.dice_weight * self.dice(logits, labels)
