"""Pictures: the learning curve of a fold (matplotlib) and a mask drawn over its photo."""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lib import files
from lib.metrics import level_of

if TYPE_CHECKING:  # pandas only for a type: the torch-free predictor (lib/deploy.py) draws overlays without it
    import pandas as pd

COLOUR = np.array([255, 40, 200], np.float32)  # RGB magenta
ALPHA = 0.45


def learning_curve(log: pd.DataFrame, path: Path, title: str) -> None:
    """curve.png: train and validation loss, and full-resolution val Dice (best epoch marked), by epoch."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for column, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        rows = log[["epoch", column]].dropna()
        if len(rows):
            ax_loss.plot(rows.epoch, rows[column], marker="o", markersize=3, label=label)
    ax_loss.set(title=f"{title}: loss (BCE + Dice)", xlabel="epoch", ylabel="loss")
    if (log[["train_loss", "val_loss"]].min().min() or 0) > 0:
        ax_loss.set_yscale("log")
    ax_loss.legend()
    rows = log[["epoch", "val_dice"]].dropna()
    if len(rows):
        ax_dice.plot(rows.epoch, rows.val_dice, marker="o", markersize=4, color="tab:green", label="val Dice")
        best = rows.loc[rows.val_dice.idxmax()]
        ax_dice.annotate(f"best {best.val_dice:.5f} (epoch {int(best.epoch)})", (best.epoch, best.val_dice),
                         textcoords="offset points", xytext=(-10, -18), ha="right")
        ax_dice.scatter([best.epoch], [best.val_dice], s=60, facecolors="none", edgecolors="black", zorder=3)
    ax_dice.set(title="val Dice at full resolution (threshold 0.5)", xlabel="epoch", ylabel="Dice")
    for ax in (ax_loss, ax_dice):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    files.write_bytes_atomic(path, buf.getvalue())


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo with (H, W) bool ``mask`` tinted and outlined."""
    out = image.astype(np.float32)
    out[mask] = (1 - ALPHA) * out[mask] + ALPHA * COLOUR
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), 2, cv2.LINE_AA)
    return out


def class_colors(task) -> np.ndarray:
    """(C, 3) uint8 RGB of each class: --class-colors when given, else a fixed palette (background black)."""
    if task.colors:
        return np.array(task.colors, np.uint8)
    rng = np.random.default_rng(7)
    palette = rng.integers(40, 256, (max(task.classes, 2), 3)).astype(np.uint8)
    palette[0] = 0
    return palette[:task.classes]


def overlay_labels(image: np.ndarray, labels: np.ndarray, task) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo with each class 1..C-1 of the (H, W) uint8 ``labels`` tinted in its colour."""
    colours = class_colors(task).astype(np.float32)
    out = image.astype(np.float32)
    painted = labels > 0
    out[painted] = (1 - ALPHA) * out[painted] + ALPHA * colours[labels[painted]]
    return out.astype(np.uint8)


def overlay_map(image: np.ndarray, prob_map: np.ndarray, task) -> np.ndarray:
    """A network-size image and its stored map (lib/task.py) -> the overlay of what the map decides at 0.5."""
    return task.overlay(image, task.decide(task.split_map(prob_map), level_of(0.5)))
