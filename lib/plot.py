"""Learning-curve picture (loss and Dice per epoch), drawn with OpenCV to avoid a plotting dependency."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from lib import files

PANEL_W, PANEL_H, MARGIN = 520, 360, 56
COLOURS = {"train_loss": (200, 90, 30), "val_loss": (30, 120, 220), "val_dice": (40, 160, 40)}


def _panel(log: pd.DataFrame, columns: list[str], title: str) -> np.ndarray:
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    x0, y0, x1, y1 = MARGIN, 30, PANEL_W - 16, PANEL_H - 40
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
    cv2.putText(img, title, (x0, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    values = log[columns].to_numpy(float)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return img
    lo, hi = float(finite.min()), float(finite.max())
    hi = hi if hi > lo else lo + 1e-6
    epochs = log.epoch.to_numpy(float)
    e_lo, e_hi = epochs.min(), max(epochs.max(), epochs.min() + 1)
    to_x = lambda e: int(x0 + (e - e_lo) / (e_hi - e_lo) * (x1 - x0))  # noqa: E731
    to_y = lambda v: int(y1 - (v - lo) / (hi - lo) * (y1 - y0))  # noqa: E731
    for v in (lo, (lo + hi) / 2, hi):
        cv2.putText(img, f"{v:.4g}", (2, to_y(v) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (80, 80, 80), 1, cv2.LINE_AA)
    for e in (e_lo, e_hi):
        cv2.putText(img, f"{e:.0f}", (to_x(e) - 4, y1 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1)
    cv2.putText(img, "epoch", ((x0 + x1) // 2 - 20, y1 + 32), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    for k, col in enumerate(columns):
        pts = [(to_x(e), to_y(v)) for e, v in zip(epochs, log[col].to_numpy(float)) if np.isfinite(v)]
        colour = COLOURS[col]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        for pt in pts:
            cv2.circle(img, pt, 3, colour, -1, cv2.LINE_AA)
        cv2.putText(img, col, (x1 - 110, y0 + 18 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return img


def learning_curve(log: pd.DataFrame, path: Path, title: str) -> None:
    """Write a PNG with two panels: train/val loss and val Dice, per epoch."""
    img = np.hstack([_panel(log, ["train_loss", "val_loss"], f"{title}: loss"),
                     _panel(log, ["val_dice"], f"{title}: val Dice (full res)")])
    ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    files.write_bytes_atomic(path, png.tobytes())
