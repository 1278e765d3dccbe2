"""Out-of-fold maps: network-size uint8 probabilities of a fold's validation images, their file, and their score.

Training writes ``oof.npz`` (ids, probs) for its best model; 03_predict.py tunes on it. Scores are Kaggle's:
each map is brought back to the original size, thresholded, and scored per image against the full-resolution truth.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lib import files
from lib.errors import PipelineError
from lib.geometry import from_net
from lib.metrics import binarize, dice, dice_histograms


def to_uint8(prob: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) probabilities in [0, 1] -> (N, H, W) uint8 levels (rounded)."""
    return (prob[:, 0] * 255).round().to(torch.uint8).cpu().numpy()


def image_dices(probs_u8: np.ndarray, cache, rows: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) full-resolution Dice of each map at ``threshold`` against row ``rows[i]`` of ``cache``."""
    h0, w0 = cache.orig_size
    return np.array([dice(binarize(np.ascontiguousarray(from_net(pr, h0, w0)), threshold), cache.full_mask(r))
                     for pr, r in zip(probs_u8, rows)], dtype=np.float64)


def full_res_dice(probs_u8: np.ndarray, cache, rows: np.ndarray, threshold: float) -> float:
    """Mean Dice as Kaggle measures it: maps resized to the original size, thresholded, per image."""
    return float(np.mean(image_dices(probs_u8, cache, rows, threshold)))


def oof_histograms(probs_u8: np.ndarray, cache, rows: np.ndarray) -> np.ndarray:
    """(N, 2, 256) Dice histograms of network-size maps brought back to the original size."""
    h0, w0 = cache.orig_size
    return np.stack([dice_histograms(from_net(pr, h0, w0), cache.full_mask(r)) for pr, r in zip(probs_u8, rows)])


@dataclass
class OutOfFold:
    """A fold's out-of-fold maps and what made them."""
    ids: list[str]  # the fold's validation images, sorted
    probs: np.ndarray  # (N, H, W) uint8
    model: str  # state_digest of the model that predicted them ("" if unrecorded)
    split: str  # folds.fold_digest of the split they belong to ("" if unrecorded)


def save_oof(path: Path, ids: list[str], probs_u8: np.ndarray, model: str = "", split: str = "") -> None:
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(ids), probs=probs_u8, model=np.array(model), split=np.array(split))
    files.write_bytes_atomic(path, buf.getvalue())


def load_oof(path: Path) -> OutOfFold:
    if not path.exists():
        raise PipelineError(f"{path}: no out-of-fold predictions; run 02_train.py for this fold first")
    try:
        with np.load(path, allow_pickle=False) as z:
            return OutOfFold(list(z["ids"]), z["probs"], str(z["model"]) if "model" in z else "",
                             str(z["split"]) if "split" in z else "")
    except (ValueError, OSError, KeyError, EOFError) as e:
        raise PipelineError(f"{path}: corrupt out-of-fold file ({e}); re-run 02_train.py for this fold") from None
