"""Test-time augmentation as augment / de-augment pairs on (N, C, H, W) tensors.

A mode is a list of pairs; the prediction is the mean of the de-augmented probabilities:

| mode | pairs averaged |
|---|---|
| none | the image |
| hflip | + its mirror left/right (what helped the Carvana winners: +0.00003 .. +0.0001 Dice) |
| vflip | + its mirror up/down |
| hvflip | the image, both mirrors and both at once (= rotated 180°): the flips of any rectangle |
| d4 | the 8 rotations by 90° and their mirrors: square inputs only (height == width) |

A 90° rotation turns an H x W input into W x H: the models learned H x W pictures, so D4 is offered only where the two
are equal (``check``); hvflip (flips and the 180° rotation) is what keeps the shape. A car photo is not symmetric up/down,
so 03's ``--tta auto`` tries only ``--tta-modes`` (none,hflip by default); aerial, medical and microscopy data may add
vflip, hvflip and d4 there.
"""
from __future__ import annotations

from typing import Callable

import torch

from lib.errors import PipelineError
from lib.task import Task

Pair = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2)


def _hvflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2, -1)


def _rotation(k: int, mirror: bool) -> Pair:
    """(x -> rot90(mirror(x), k), its inverse y -> mirror(rot90(y, -k))): one element of D4."""
    def augment(x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x.flip(-1) if mirror else x, k, dims=(-2, -1))

    def deaugment(y: torch.Tensor) -> torch.Tensor:
        y = torch.rot90(y, -k, dims=(-2, -1))
        return y.flip(-1) if mirror else y
    return augment, deaugment


_FLIPS: list[Pair] = [(_identity, _identity), (_hflip, _hflip), (_vflip, _vflip), (_hvflip, _hvflip)]

MODES: dict[str, list[Pair]] = {
    "none": _FLIPS[:1],
    "hflip": _FLIPS[:2],
    "vflip": [_FLIPS[0], _FLIPS[2]],
    "hvflip": _FLIPS,
    "d4": [_rotation(k, mirror) for mirror in (False, True) for k in range(4)],
}
SQUARE_ONLY = frozenset({"d4"})  # modes that rotate by 90 degrees
CHOICES = tuple(MODES)
AUTO_DEFAULT = "hflip"  # what --tta auto uses where nothing is tuned (a full model without fold models)


def check(mode: str, height: int, width: int) -> None:
    """PipelineError when TTA ``mode`` cannot run at the network size ``height`` x ``width``."""
    if mode not in MODES:
        raise PipelineError(f"unknown TTA mode {mode!r}; one of {', '.join(CHOICES)}")
    if mode in SQUARE_ONLY and height != width:
        raise PipelineError(f"--tta {mode} rotates by 90 degrees and needs a square network input, not {height} x "
                            f"{width} (--height {height} --width {width}); use hvflip (the flips and the 180-degree "
                            "rotation), or give --height equal to --width")


def candidates(asked: str, allowed: str, height: int, width: int) -> list[str]:
    """The modes 03 tunes over: ``asked`` (--tta) alone, or for auto those of ``allowed`` (--tta-modes, comma-separated,
    in the order given, the simplest first: ties go to it), less the square-only ones when the input is not square."""
    if asked != "auto":
        check(asked, height, width)
        return [asked]
    modes = [m.strip() for m in allowed.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise PipelineError(f"--tta-modes {allowed!r}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; give "
                            f"a comma-separated list of {', '.join(CHOICES)}")
    fits = [m for m in dict.fromkeys(modes) if m not in SQUARE_ONLY or height == width]
    if not fits:
        raise PipelineError(f"--tta-modes {allowed}: none runs at the non-square network size {height} x {width}; "
                            "add hflip, vflip or hvflip")
    return fits


def asked_text(asked: str, allowed: str) -> str:
    """What tuning.json records as asked: --tta, and for auto the modes it chose among ('auto:none,hflip')."""
    return asked if asked != "auto" else f"auto:{allowed.replace(' ', '')}"


def predict_proba(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str,
                  task: Task) -> torch.Tensor:
    """Mean probability (N, channels, H, W) float32 over the mode's augmentations (sigmoid for binary masks,
    softmax over the classes for labels: ``task.probabilities``)."""
    if mode in SQUARE_ONLY and images.shape[-2] != images.shape[-1]:
        raise ValueError(f"TTA {mode} needs square inputs, got {tuple(images.shape[-2:])}")
    pairs = MODES[mode]
    total = None
    for augment, deaugment in pairs:
        prob = deaugment(task.probabilities(model(augment(images))))
        total = prob if total is None else total + prob
    return total / len(pairs)
