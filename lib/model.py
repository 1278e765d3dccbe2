"""The segmentation network and self-describing checkpoints.

A checkpoint holds the unwrapped model's state_dict and the Params it was trained with, so
``load_model(path)`` rebuilds it with no architecture flags. Checkpoints are loaded with
``weights_only=True``: a file carrying code is refused, never run.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

import params as params_mod
from lib import files, imageformat
from lib.errors import PipelineError, restart_advice
from lib.imageformat import RGB8, ImageFormat
from lib.task import RECORD as TASK_RECORD, Task
from params import Params

# ImageNet statistics, applied on the device so loaders move uint8 (4x less data)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build_model(p: Params, pretrained: bool | None = None, image_format: ImageFormat = RGB8) -> nn.Module:
    """The smp network for ``p`` (logits: one output channel for binary masks, C for C classes), made by
    ``smp.create_model``: any architecture, any encoder smp knows (its own and timm's ``tu-...``), any weights name
    smp accepts for it. ``pretrained=False`` builds it without weights whatever ``p.encoder_weights`` says (a
    checkpoint will fill them). ``image_format`` (lib/imageformat.py, the training set's): the input channels (smp
    adapts a pretrained first convolution to other than 3) and the normalisation."""
    import segmentation_models_pytorch as smp
    weights = None if pretrained is False or p.encoder_weights == "none" else p.encoder_weights
    kwargs = {}
    if p.arch.lower() in (a.lower() for a in params_mod.DECODER_ARCHS):
        kwargs["decoder_channels"] = params_mod.decoder_widths(p.decoder_channels)
    elif p.decoder_channels != Params.decoder_channels:
        raise PipelineError(f"--decoder-channels applies to {' and '.join(params_mod.DECODER_ARCHS)}, not {p.arch}")
    try:
        net = smp.create_model(p.arch, encoder_name=p.encoder, encoder_weights=weights,
                               in_channels=image_format.channels,
                               classes=Task(p.classes).channels,
                               **kwargs)
    except KeyError as e:  # smp's own words for an unknown architecture, encoder or weights name
        text = str(e.args[0]) if e.args else str(e)
        raise PipelineError(f"--arch {p.arch} --encoder {p.encoder} --encoder-weights {p.encoder_weights}: "
                            f"{text[:400]}{' ...' if len(text) > 400 else ''}") from None
    except Exception as e:  # noqa: BLE001 -- the download can fail in many library-specific ways
        if weights is None:
            raise
        raise PipelineError(
            f"could not get the {weights} weights of encoder {p.encoder!r} ({type(e).__name__}: {e}). "
            "Offline? Run with --encoder-weights none (train from scratch), or download once while online "
            "(they are cached by torch hub / huggingface hub)") from None
    return Segmenter(net, image_format)


class Segmenter(nn.Module):
    """smp network taking (N, C, H, W) images of ``image_format`` (uint8 RGB, uint16, or float on the same value
    scale); normalises on the device, returns logits (N, channels, H, W)."""

    def __init__(self, net: nn.Module, image_format: ImageFormat = RGB8):
        super().__init__()
        self.net = net
        self.image_format = image_format  # recorded in checkpoints (checkpoint_state)
        if image_format.rgb8:  # as before, to the last bit
            mean, std = torch.tensor(MEAN).view(1, 3, 1, 1) * 255, torch.tensor(STD).view(1, 3, 1, 1) * 255
        else:
            shape = (1, image_format.channels, 1, 1)
            mean, std = torch.tensor(image_format.mean).view(shape), torch.tensor(image_format.std).view(shape)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return self.net(x)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile / DataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def checkpoint_state(model: nn.Module, p: Params, **extra) -> dict:
    """{model, params, **extra} (extra: epoch, score, optimizer state, ...) with every tensor copied, so the
    snapshot stays as it is while training goes on and can be written later (``write_checkpoint``)."""
    plain = unwrap(model)
    state = {"model": plain.state_dict(), "params": p.to_dict(), **extra}
    if not plain.image_format.rgb8:  # checkpoints of 8-bit RGB models stay as they were
        state["image_format"] = imageformat.as_dict(plain.image_format)
    return _copy_tensors(state)


def state_digest(state_dict: dict) -> str:
    """A short hash of a state_dict's names and values: what a model's out-of-fold file, tuning and maps record
    to say which model made them."""
    import hashlib
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _copy_tensors(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _copy_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tensors(v) for v in obj)
    return obj


def write_checkpoint(path: Path, state: dict) -> None:
    """Atomically write a ``checkpoint_state``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    files.write_bytes_atomic(path, buf.getvalue())


# what model.pt holds (checkpoint_state plus write_best's digest); older checkpoints lack the optional keys
CHECKPOINT = {"model": files.MapOf(torch.Tensor), "params": dict, "epoch?": int, "val_dice?": float, "split?": str,
              "digest?": str, "task": TASK_RECORD, "image_format?": imageformat.SCHEMA}


def _fold_of(path: Path) -> str:
    """The --fold of a checkpoint in output/<experiment>/fold<K>/ ("K") or full/ ("full"); "K" for one elsewhere."""
    name = path.parent.name
    return name[4:] if name.startswith("fold") and name[4:].isdigit() else name if name == files.FULL else "K"


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    advice: str | None = None, schema: dict = CHECKPOINT) -> dict:
    """The checkpoint's dict, loaded safely and checked against ``schema`` (keys and their types,
    ``files.schema_problem``); a clear error for a missing, corrupt, unsafe or incomplete file, ending with
    ``advice`` (the command that repairs it, where the caller knows it)."""
    path = Path(path)
    fold = _fold_of(path)
    advice = restart_advice(fold) if advice is None else advice
    if not path.exists():
        raise PipelineError(f"{path}: no checkpoint; train this fold first: "
                            f"{params_mod.command('02_train.py', '--fold', fold)}")
    if path.stat().st_size == 0:
        raise PipelineError(f"{path}: empty (0 bytes); {advice}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln for ln in str(e).splitlines() if "GLOBAL" in ln] or str(e).splitlines()[:1]
        raise PipelineError(f"{path}: refused, nothing in it was run: it holds objects other than tensors and plain "
                            f"values, which could run code ({lines[0].strip()}); {advice}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise PipelineError(f"{path}: corrupt or not a checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); {advice}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "params" not in ckpt:
        raise PipelineError(f"{path}: not a checkpoint of this project (no model/params inside); {advice}")
    files.check_schema(path, ckpt, schema, "02_train.py", advice)
    return ckpt


def load_model(path: Path, device: str | torch.device = "cpu",
               advice: str | None = None) -> tuple[nn.Module, Params, dict]:
    """Rebuild the model from its own checkpoint (its own encoder and size), in eval mode."""
    advice = restart_advice(_fold_of(Path(path))) if advice is None else advice
    ckpt = read_checkpoint(path, device, advice)
    try:
        p = params_mod.from_dict(ckpt["params"])
    except (ValueError, TypeError) as e:
        raise PipelineError(f"{path}: its saved settings are invalid ({e}); {advice}") from None
    # a checkpoint without the record is of an 8-bit RGB model (the only kind before the record existed)
    fmt = imageformat.from_dict(ckpt["image_format"], str(path), advice) if "image_format" in ckpt else RGB8
    model = build_model(p, pretrained=False, image_format=fmt)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise PipelineError(f"{path}: weights do not fit a {p.arch}-{p.encoder} ({str(e).splitlines()[0]}); "
                            f"{advice}") from None
    model.to(device).eval()
    return model, p, ckpt
