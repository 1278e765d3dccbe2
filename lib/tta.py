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

Multi-scale TTA (``--tta-scales 0.75,1,1.25``): each flip mode also runs with the network input resized by every scale
(bilinear, each side rounded to the nearest multiple of 32: ``scaled_size``), each prediction resized back (bilinear,
the probabilities after the Task's activation, so a softmax's classes still sum to 1) and averaged with the flips. A
mode then reads 'hflip@0.75,1,1.25' (the scales sorted, as tuning.json and test_probs/meta.json record it: another set
of scales is another mode, so it is tuned again and its maps predicted again); at scale 1 alone it is the flip mode's
name and bytes ('hflip'). With --tile-size each tile is the network input, so the tile is what is scaled. ``auto``
tries each of --tta-modes at scale 1, then each at the scales (twice the passes; ties go to scale 1).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

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
SCALE_MARK = "@"  # 'hflip@0.75,1,1.25': the flip mode at those scales
STRIDE = 32  # every side of a network input is a multiple of it


def parse_scales(text: str) -> tuple[float, ...]:
    """--tta-scales '1.0,0.75,1.25' -> (0.75, 1.0, 1.25), sorted and without repeats; ValueError for an empty list, a
    word that is not a number or a scale that is not a finite number > 0."""
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers") from None
    if not scales or not all(0 < s < float("inf") for s in scales):
        raise ValueError(f"{text!r} must list scales > 0 (1 = the network size)")
    return tuple(sorted(set(scales)))


def scales_text(scales: tuple[float, ...]) -> str:
    """(0.75, 1.0) -> '0.75,1': how a mode's name and tuning.json write a set of scales."""
    return ",".join(f"{s:g}" for s in scales)


def with_scales(flips: str, scales: tuple[float, ...]) -> str:
    """The name of flip mode ``flips`` at ``scales``: 'hflip' at scale 1 alone, else 'hflip@0.75,1,1.25'."""
    return flips if scales == (1.0,) else f"{flips}{SCALE_MARK}{scales_text(scales)}"


def split(mode: str) -> tuple[str, tuple[float, ...]]:
    """'hflip@0.75,1' -> ('hflip', (0.75, 1.0)); 'hflip' -> ('hflip', (1.0,)); PipelineError for an unknown one."""
    flips, _, scales = mode.partition(SCALE_MARK)
    try:
        parsed = parse_scales(scales) if scales else (1.0,)
    except ValueError as e:
        raise PipelineError(f"TTA mode {mode!r}: scales {e}") from None
    if flips not in MODES:
        raise PipelineError(f"unknown TTA mode {mode!r}; one of {', '.join(CHOICES)}, with scales after "
                            f"{SCALE_MARK!r} or without")
    return flips, parsed


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The network input ``height`` x ``width`` at ``scale``: each side times the scale, rounded to the nearest
    multiple of 32 (halves to the even multiple: Python's round); may be 0 (``check`` refuses sides under 32). Scale 1
    is the input itself."""
    if scale == 1.0:
        return height, width
    return STRIDE * round(height * scale / STRIDE), STRIDE * round(width * scale / STRIDE)


def check(mode: str, height: int, width: int) -> None:
    """PipelineError when TTA ``mode`` cannot run at the network input ``height`` x ``width`` (the tile with
    --tile-size): a square-only mode on another shape, or a scale that leaves a side under 32."""
    flips, scales = split(mode)
    if flips in SQUARE_ONLY and height != width:
        raise PipelineError(f"--tta {flips} rotates by 90 degrees and needs a square network input, not {height} x "
                            f"{width} (--height {height} --width {width}); use hvflip (the flips and the 180-degree "
                            "rotation), or give --height equal to --width")
    small = [s for s in scales if min(scaled_size(height, width, s)) < STRIDE]
    if small:
        import params
        kept = tuple(s for s in scales if s not in small) or (1.0,)
        raise PipelineError(f"--tta-scales {scales_text(scales)}: scale {small[0]:g} makes the {height} x {width} "
                            f"network input {' x '.join(map(str, scaled_size(height, width, small[0])))} (sides "
                            f"rounded to multiples of {STRIDE}, at least {STRIDE}); run "
                            f"{params.rerun('--tta-scales', scales_text(kept))}")


def fixed(asked: str, scales: str) -> str:
    """The mode --tta ``asked`` (not auto) names at --tta-scales ``scales``."""
    return with_scales(asked, parse_scales(scales))


def candidates(asked: str, allowed: str, height: int, width: int, scales: str = "1") -> list[str]:
    """The modes 03 tunes over: ``asked`` (--tta) alone at --tta-scales ``scales``, or for auto those of ``allowed``
    (--tta-modes, comma-separated, in the order given, the simplest first: ties go to it), less the square-only ones
    when the input is not square, at scale 1 and then (when ``scales`` is not 1 alone) each at ``scales``. ``height``
    x ``width``: the network input (the tile with --tile-size)."""
    at = parse_scales(scales)
    if asked != "auto":
        check(fixed(asked, scales), height, width)
        return [fixed(asked, scales)]
    modes = [m.strip() for m in allowed.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise PipelineError(f"--tta-modes {allowed!r}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; give "
                            f"a comma-separated list of {', '.join(CHOICES)}")
    fits = [m for m in dict.fromkeys(modes) if m not in SQUARE_ONLY or height == width]
    if not fits:
        raise PipelineError(f"--tta-modes {allowed}: none runs at the non-square network size {height} x {width}; "
                            "add hflip, vflip or hvflip")
    scaled = [with_scales(m, at) for m in fits] if at != (1.0,) else []
    for mode in scaled[:1]:
        check(mode, height, width)
    return fits + scaled


def asked_text(asked: str, allowed: str, scales: str = "1") -> str:
    """What tuning.json records as asked: --tta, and for auto the modes it chose among ('auto:none,hflip'); with
    --tta-scales other than 1 alone, '@' and the scales ('auto:none,hflip@0.75,1,1.25')."""
    at = parse_scales(scales)
    text = asked if asked != "auto" else f"auto:{allowed.replace(' ', '')}"
    return text if at == (1.0,) else f"{text}{SCALE_MARK}{scales_text(at)}"


def _resized(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, *size) bilinear (align_corners False); integer images (uint8) are rounded back to their
    type."""
    if x.shape[-2:] == size:
        return x
    if x.is_floating_point():
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return y.round().clamp(torch.iinfo(x.dtype).min, torch.iinfo(x.dtype).max).to(x.dtype)


def predict_proba(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str,
                  task: Task) -> torch.Tensor:
    """Mean probability (N, channels, H, W) float32 over the mode's augmentations (sigmoid for binary masks,
    softmax over the classes for labels: ``task.probabilities``) and its scales (each resized back to H x W)."""
    flips, scales = split(mode)
    if flips in SQUARE_ONLY and images.shape[-2] != images.shape[-1]:
        raise ValueError(f"TTA {mode} needs square inputs, got {tuple(images.shape[-2:])}")
    pairs = MODES[flips]
    size = (int(images.shape[-2]), int(images.shape[-1]))  # ints also while exported (H x W are fixed there)
    total = None
    for scale in scales:
        x = _resized(images, scaled_size(*size, scale))
        for augment, deaugment in pairs:
            prob = _resized(deaugment(task.probabilities(model(augment(x)))), size)
            total = prob if total is None else total + prob
    return total / (len(pairs) * len(scales))
