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
    epochs = log.epoch.dropna()
    for ax in (ax_loss, ax_dice):
        if len(epochs) and epochs.max() - epochs.min() < 2:  # one or two epochs: whole epochs either side
            ax.set_xlim(epochs.min() - 1, epochs.max() + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    files.write_bytes_atomic(path, buf.getvalue())


TINT_ROWS = 512  # rows tinted at a time: a float copy of a band, not of a 70 MP photo (3 x 840 MB)


def tint(image: np.ndarray, masks: list[np.ndarray], colours: list[np.ndarray]) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 RGB ``image`` with each (H, W) bool mask's pixels blended (``ALPHA``) with its
    colour (an RGB triple, or an (H, W, 3) colour per pixel), in order (overlaps mix), ``TINT_ROWS`` rows at a time
    in float32 then cut to uint8."""
    out = image.copy()
    for top in range(0, out.shape[0], TINT_ROWS):
        band = out[top:top + TINT_ROWS]
        mixed = band.astype(np.float32)
        for mask, colour in zip(masks, colours):
            m = mask[top:top + TINT_ROWS]
            c = colour if colour.ndim == 1 else colour[top:top + TINT_ROWS][m]
            mixed[m] = (1 - ALPHA) * mixed[m] + ALPHA * c.astype(np.float32)
        band[...] = mixed.astype(np.uint8)
    return out


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo with (H, W) bool ``mask`` tinted and outlined."""
    out = tint(image, [mask], [COLOUR])
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), 2, cv2.LINE_AA)
    return out


# classes without --class-colors: fixed, distinct colours (class 0, the background, is never painted)
PALETTE = np.array([(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], np.uint8)
TRUTH_COLOUR = (0, 230, 0)  # RGB green: the outline of the truth in pictures of scored images
LEGEND_BOX = (25, 25, 25)  # RGB of the legend's background


def class_colors(task) -> np.ndarray:
    """(C, 3) uint8 RGB of each class: --class-colors (kept in the checkpoint) when given, else ``PALETTE``."""
    if task.colors:
        return np.array(task.colors, np.uint8)
    return PALETTE[np.arange(task.classes) % len(PALETTE)] if task.classes <= len(PALETTE) else \
        np.vstack([PALETTE, PALETTE[1:][np.arange(task.classes - len(PALETTE)) % (len(PALETTE) - 1)]])


def line_width(shape: tuple[int, ...]) -> int:
    """Outline thickness in pixels for a picture of this (H, W, ...) shape: 1 up to 400 pixels, then more."""
    return max(1, round(min(shape[:2]) / 400))


def outline(picture: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 RGB with the outer and inner borders of the (H, W) bool ``mask`` drawn in ``rgb``."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(picture)
    cv2.drawContours(out, contours, -1, tuple(int(v) for v in rgb), line_width(out.shape), cv2.LINE_8)
    return out


def legend(picture: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 RGB with a legend in its top-left corner: a colour swatch and a name a row, on a
    dark box (the picture keeps its size)."""
    out = np.ascontiguousarray(picture).copy()
    h = out.shape[0]
    scale = max(0.3, min(1.0, h / 500))
    row = max(9, round(24 * scale))
    swatch = row - 3
    text_w = max(cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for name, _ in entries)
    box_w, box_h = swatch + text_w + 9, row * len(entries) + 4
    out[:box_h, :box_w] = LEGEND_BOX
    for k, (name, rgb) in enumerate(entries):
        top = 2 + k * row
        out[top + 1:top + 1 + swatch, 2:2 + swatch] = rgb
        cv2.putText(out, name, (swatch + 6, top + swatch), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def overlay_labels(image: np.ndarray, labels: np.ndarray, task, truth: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo with each class 1..C-1 of the (H, W) uint8 ``labels`` tinted in its colour, each
    class of the ``truth`` labels (when given) outlined in its colour, and a legend of the classes."""
    colours = class_colors(task)
    out = tint(image, [labels > 0], [colours[labels]])
    entries = [(task.names[c], tuple(int(v) for v in colours[c])) for c in task.scored]
    if truth is not None:
        for c in task.scored:
            out = outline(out, truth == c, tuple(int(v) for v in colours[c]))
        entries.append(("outline: truth", (255, 255, 255)))
    return legend(out, entries)


def overlay_multilabel(image: np.ndarray, decision: np.ndarray, task, truth: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo with each label of the (C, H, W) bool ``decision`` tinted in its colour, one over the
    other (where labels overlap the tints mix), each label of the (C, H, W) bool ``truth`` (when given) outlined in its
    colour, and a legend of the labels. Label c's colour: --class-colors' row c, else ``PALETTE[c + 1]`` (a
    multi-label task has no background to leave black)."""
    colours = np.array(task.colors, np.uint8) if task.colors else class_colors(type(task)(task.classes + 1))[1:]
    out = tint(image, list(decision), list(colours))
    entries = [(task.names[c], tuple(int(v) for v in colours[c])) for c in task.scored]
    if truth is not None:
        for c in task.scored:
            out = outline(out, truth[c], tuple(int(v) for v in colours[c]))
        entries.append(("outline: truth", (255, 255, 255)))
    return legend(out, entries)


def overlay_truth(picture: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A binary ``overlay`` with the (H, W) bool ``truth`` outlined in green and a legend of the two."""
    out = outline(picture, truth, TRUTH_COLOUR)
    return legend(out, [("prediction", tuple(int(v) for v in COLOUR)), ("truth", TRUTH_COLOUR)])


def titled(picture: np.ndarray, title: str) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 RGB under a black strip holding ``title`` in white."""
    w = picture.shape[1]
    scale = 0.45
    while scale > 0.25 and cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > w - 8:
        scale -= 0.05
    strip = np.zeros((22, w, 3), np.uint8)
    cv2.putText(strip, title, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([strip, picture])


def overlay_map(image: np.ndarray, prob_map: np.ndarray, task) -> np.ndarray:
    """A network-size image and its stored map (lib/task.py) -> the overlay of what the map decides at 0.5."""
    return task.overlay(image, task.decide(task.split_map(prob_map), level_of(0.5)))
