"""Single-photo prediction for people who want to look at a mask: mask PNG and an overlay picture."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from lib import files
from lib.cache import load_net_image
from lib.geometry import from_net
from lib.metrics import binarize
from lib.predict import Ensemble, predict_batch

COLOUR = np.array([255, 40, 200], np.float32)  # RGB magenta
ALPHA = 0.45


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB photo with (H, W) bool ``mask`` tinted and outlined."""
    out = image.astype(np.float32)
    out[mask] = (1 - ALPHA) * out[mask] + ALPHA * COLOUR
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), 2, cv2.LINE_AA)
    return out


def predict_image(ens: Ensemble, path: Path, mode: str, threshold: float, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<stem>_mask.png`` (0/255, original size) and ``<stem>_overlay.jpg``; return both paths."""
    h, w = ens.size
    image, (h0, w0) = load_net_image(Path(path), h, w)
    prob = predict_batch(ens, torch.from_numpy(image).permute(2, 0, 1)[None], mode)[0]
    mask = binarize(np.ascontiguousarray(from_net(prob, h0, w0)), threshold)
    full, _ = load_net_image(Path(path), h0, w0)  # the photo as stored (EXIF orientation ignored, as for its mask)
    stem = Path(path).stem
    mask_path, overlay_path = out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.jpg"
    ok1, png = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    ok2, jpg = cv2.imencode(".jpg", cv2.cvtColor(overlay(full, mask), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    files.write_bytes_atomic(mask_path, png.tobytes())
    files.write_bytes_atomic(overlay_path, jpg.tobytes())
    return mask_path, overlay_path
