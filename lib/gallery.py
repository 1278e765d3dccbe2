"""The ``overlays/`` folder of a run (written by 03_predict.py): a handful of predictions drawn on their photos.

Out-of-fold: the ``SHOWN`` worst and best training images by their full-resolution score (Dice; multi-class: the
mean over the classes), from the folds' oof.npz maps (no TTA) decided as tuning.json decides, the truth outlined,
named ``oof_worst1_dice0.8123_<id>.jpg``; test: the first ``TEST_SHOWN`` test images with a map, ``test_<id>.jpg``.
Pictures only: no map, tuning or submission reads them. ``made_by.json`` records what made them, so a re-run with
the same tuning leaves them as they are, and a new one replaces them (and removes the ones it no longer shows).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from lib import files, fingerprint, oof as oof_mod, testmaps
from lib.errors import PipelineError
from lib.imageformat import RGB8, ImageFormat, display_pixels
from lib.photos import read_image_bytes
from lib.task import Task

FOLDER = "overlays"  # in the run folder
MADE_BY = "made_by.json"
SHOWN = 3  # worst and best out-of-fold images each
TEST_SHOWN = 4
MIN_WIDTH, MAX_WIDTH = 384, 768  # pictures are enlarged or shrunk to fit between these widths
DRAWN_WIDTH = 2 * MAX_WIDTH  # wider photos are shrunk to this before the decision is drawn on them (a 70 MP photo
# is not drawn at full size to be shown 768 pixels wide)


def read_photo(path: Path, fmt: ImageFormat = RGB8, bands: str = "1,2,3") -> np.ndarray:
    """(H, W, 3) uint8 RGB of a photo as stored (like its mask: no EXIF rotation), shown as
    ``imageformat.display_pixels`` shows images of ``fmt`` (``bands``: --display-bands)."""
    image = display_pixels(read_image_bytes(path), path, fmt, bands)
    if image is None:
        raise PipelineError(f"{path}: not a readable image")
    return image


def drawable(image: np.ndarray, truth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(the (H, W, 3) photo, its truth ((H, W) or (C, H, W)) or None) shrunk to ``DRAWN_WIDTH`` wide when wider (the
    photo by area, the truth by nearest pixel): what a picture is drawn on."""
    h, w = image.shape[:2]
    if w <= DRAWN_WIDTH:
        return image, truth
    size = (DRAWN_WIDTH, max(1, round(h * DRAWN_WIDTH / w)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if truth is not None:
        planes = truth.reshape(-1, h, w).astype(np.uint8)
        truth = np.stack([cv2.resize(t, size, interpolation=cv2.INTER_NEAREST) for t in planes]).astype(
            truth.dtype).reshape(*truth.shape[:-2], size[1], size[0])
    return image, truth


def fit_width(picture: np.ndarray) -> np.ndarray:
    """``picture`` resized (aspect kept) to a width within MIN_WIDTH..MAX_WIDTH: nearest when enlarged."""
    h, w = picture.shape[:2]
    width = min(max(w, MIN_WIDTH), MAX_WIDTH)
    if width == w:
        return picture
    size = (width, max(1, round(h * width / w)))
    return cv2.resize(picture, size, interpolation=cv2.INTER_NEAREST if width > w else cv2.INTER_AREA)


def pick(scores: np.ndarray, n: int = SHOWN) -> list[tuple[str, int, int]]:
    """(kind, rank, index) of the ``n`` lowest then the ``n`` highest ``scores`` (ties: the first); an index shown as
    a worst one is not shown again as a best one."""
    order = np.argsort(scores, kind="stable")
    worst = [int(i) for i in order[:n]]
    best = [int(i) for i in order[::-1] if int(i) not in worst][:n]
    return [("worst", r + 1, i) for r, i in enumerate(worst)] + [("best", r + 1, i) for r, i in enumerate(best)]


def oof_maps(p, ens, cache, split) -> tuple[list[str], list[np.ndarray]]:
    """(ids, maps) of every fold whose oof.npz this very model made for its validation images; the others are left
    out with a note."""
    ids, maps = [], []
    for k, fp in zip(ens.folds, ens.fingerprints):
        path = files.fold_dir(p.output_dir, p.experiment, k) / files.OOF
        val_ids = sorted(split.id[split.fold == k])
        try:
            oof = oof_mod.load_oof(path, advice="") if path.exists() else None
        except PipelineError:
            oof = None
        if oof is None or oof.ids != val_ids or oof.model != fp["digest"]:
            print(f"note: overlays: no out-of-fold pictures of fold {k} ({path} missing or not made by its model.pt)")
            continue
        ids += val_ids
        maps += list(oof.probs)
    return ids, maps


def write(p, split, tuning, ens, test_models, test_ids: list[str], test_paths: dict[str, Path]) -> Path:
    """Write the overlays of this run (see the module) into ``<run>/overlays`` unless made_by.json says they are the
    ones of this tuning; return the folder. ``ens``: the fold models (None without them: no out-of-fold pictures);
    ``test_models``: the models that predicted the test maps (their task and image format draw them)."""
    from lib.cache import open_for
    task: Task = test_models.task
    out = files.run_dir(p.output_dir, p.experiment) / FOLDER
    probs = files.run_dir(p.output_dir, p.experiment) / files.TEST_PROBS
    shown_test = [i for i in test_ids if (probs / f"{i}.png").exists()][:TEST_SHOWN]
    key = fingerprint.digest_bytes(json.dumps({"tuning": tuning.record(), "test": shown_test, "shown": SHOWN,
                                               "colors": [list(c) for c in task.colors]}, sort_keys=True).encode())
    before = _made_by(out)
    if before.get("key") == key and all((out / name).exists() for name in before.get("files", [])):
        print(f"overlays: up to date in {out}")
        return out
    pictures: dict[str, np.ndarray] = {}
    if ens is not None:
        h, w = ens.size
        cache = open_for(p, list(split.id), h, w)
        ids, maps = oof_maps(p, ens, cache, split)
        if ids:
            rows = cache.rows(ids)
            scores = oof_mod.image_dices(maps, cache, rows, tuning.decision_threshold, task,
                                         tuning.postprocess, tuning.decision_min_area)
            for kind, rank, i in pick(scores):
                image, truth = drawable(read_photo(cache.pair(int(rows[i]))[0], ens.image_format, p.display_bands),
                                        cache.full_mask(int(rows[i])))
                decision = task.decide_maps([maps[i]], [1.0], image.shape[:2], tuning.decision_threshold,
                                            tuning.postprocess, tuning.decision_min_area)
                picture = task.overlay(image, decision, truth)
                fold = int(split.fold[split.id == ids[i]].iloc[0])
                pictures[f"oof_{kind}{rank}_dice{scores[i]:.4f}_{ids[i]}.jpg"] = _titled(
                    picture, f"{ids[i]} out-of-fold (fold {fold}), Dice {scores[i]:.4f}, {kind} {rank}")
    for image_id in shown_test:
        image, _ = drawable(read_photo(test_paths[image_id], test_models.image_format, p.display_bands))
        decision = task.decide_maps([testmaps.read_map(probs / f"{image_id}.png")], [1.0], image.shape[:2],
                                    tuning.decision_threshold, tuning.postprocess, tuning.decision_min_area)
        pictures[f"test_{image_id}.jpg"] = _titled(task.overlay(image, decision), f"{image_id} test")
    out.mkdir(parents=True, exist_ok=True)
    for name, picture in pictures.items():
        ok, jpg = cv2.imencode(".jpg", picture[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise OSError(f"could not encode {out / name}")
        files.write_bytes_atomic(out / name, jpg.tobytes())
    for name in before.get("files", []):
        if name not in pictures:
            (out / name).unlink(missing_ok=True)
    files.write_json(out / MADE_BY, {"key": key, "files": sorted(pictures)})
    n_oof = sum(name.startswith("oof_") for name in pictures)
    print(f"overlays: {n_oof} out-of-fold (worst and best by Dice, truth outlined) and {len(pictures) - n_oof} test "
          f"picture(s) in {out}")
    return out


def _titled(picture: np.ndarray, title: str) -> np.ndarray:
    from lib.plot import titled
    return titled(fit_width(picture), title)


def _made_by(out: Path) -> dict:
    """What made the pictures in ``out`` ({key, files}); {} when unreadable or absent (then all are made again)."""
    try:
        record = json.loads((out / MADE_BY).read_text())
    except (OSError, ValueError):
        return {}
    return {} if files.schema_problem(record, {"key": str, "files": files.ListOf(str)}) else record
