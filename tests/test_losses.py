"""The --loss menu (lib/losses.py): every choice trains, binary and multi-class, and the default is today's loss."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lib import losses
from lib.task import BINARY, Task
import params


def _old_bce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss before the menu, written out: BCE + smp's binary DiceLoss, both weight 1."""
    from segmentation_models_pytorch.losses import DiceLoss
    return nn.BCEWithLogitsLoss()(logits, target) + DiceLoss(mode="binary", from_logits=True)(logits, target)


def _old_ce_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    from segmentation_models_pytorch.losses import DiceLoss
    return nn.CrossEntropyLoss()(logits, labels) + DiceLoss(mode="multiclass", from_logits=True)(logits, labels)


def test_choices_are_the_settings():
    assert params.SETTINGS["loss"].choices == losses.CHOICES and params.Params().loss == "bce_dice"
    from lib.train import may_change_on_resume
    assert not may_change_on_resume("loss")  # 02 --resume refuses a changed --loss


def test_default_is_the_old_loss_on_a_fixed_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, generator=g) * 3
    target = (torch.rand(2, 1, 16, 16, generator=g) * 1.2).clamp(max=1)  # soft edges, as the loader gives
    assert BINARY.loss(params.Params().loss, 1.0, 1.0)(logits, target).item() == _old_bce_dice(logits, target).item()
    labels = torch.randint(0, 4, (2, 16, 16), generator=g)
    mc = torch.randn(2, 4, 16, 16, generator=g)
    assert Task(4).loss("bce_dice", 1.0, 1.0)(mc, labels).item() == _old_ce_dice(mc, labels).item()
    weighted = BINARY.loss("bce_dice", 0.25, 2.0)(logits, target)
    from segmentation_models_pytorch.losses import DiceLoss
    manual = 0.25 * nn.BCEWithLogitsLoss()(logits, target) + 2.0 * DiceLoss("binary", from_logits=True)(logits, target)
    assert weighted.item() == pytest.approx(manual.item(), rel=1e-6)


@pytest.mark.parametrize("task", [BINARY, Task(3)], ids=["binary", "multiclass"])
@pytest.mark.parametrize("name", losses.CHOICES)
def test_each_loss_trains_a_tiny_net(name, task):
    """A few Adam steps on one fixed batch: the loss is finite and goes down."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, task.channels, 3, padding=1))
    images = torch.rand(2, 3, 16, 16)
    if task.binary:  # a square object, soft at its edges
        masks = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
        masks[:, :, 4:12, 4:12], masks[:, :, 3, 4:12] = 255, 128
        images[:, 0] += masks[:, 0].float() / 255
    else:
        masks = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
        masks[:, :, 2:8, 2:8], masks[:, :, 9:15, 6:14] = 1, 2
        images[:, 1] += (masks[:, 0] == 1).float()
        images[:, 2] += (masks[:, 0] == 2).float()
    target = task.target(masks)
    loss_fn = task.loss(name, 1.0, 1.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    values = []
    for _ in range(15):
        loss = loss_fn(net(images), target)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < values[0] * 0.9, values


def test_a_weight_of_zero_drops_the_term():
    logits, target = torch.randn(1, 1, 8, 8), (torch.rand(1, 1, 8, 8) > 0.5).float()
    from segmentation_models_pytorch.losses import LovaszLoss
    alone = LovaszLoss("binary", per_image=False, from_logits=True)(logits, target)
    assert BINARY.loss("lovasz", 0.0, 1.0)(logits, target).item() == pytest.approx(alone.item())
    with pytest.raises(ValueError, match="unknown loss"):
        losses.make_loss("dice_only", losses.BINARY)
