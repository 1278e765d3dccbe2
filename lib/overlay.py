"""Masks for any photos (``03_predict.py --images``): a mask PNG, an overlay picture and an RLE row per photo.

Needs only the experiment's fold models (output/<experiment>/fold*/model.pt): no folds.csv, no test set. The tuned
TTA and threshold are used when tuning.json is sound and was made by these models; else ``--tta`` (auto: hflip)
and ``--threshold`` (0: 0.5). Each photo is brought to the network size and its mask back to its own size.

One bad file never stops a batch: a photo that cannot be read or decoded (empty, truncated, not an image, a folder
named like one, too large for --max-image-mp) is skipped with one line naming it and why, and counted at the end; it
gets no mask and no masks.csv row. The run fails only when no photo at all could be predicted.
"""
from __future__ import annotations

import glob
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from lib import files, fingerprint, postprocess, rle, tiles, tta, tuning as tuning_mod
from lib.data import worker_count
from lib.errors import PipelineError, listing
from lib.inputs import image_header_size, read_image_bytes
from lib.layout import PHOTO_EXTS, split_name
from lib.progress import progress
from lib.predict import (DEFAULT_THRESHOLD, Ensemble, TestImages, load_fold_models, predict_batch,
                         tile_predictor)
from lib.task import BINARY, Task
from params import Params

MASKS_CSV = "masks.csv"
WRITTEN = ".written_by_03_predict.json"  # in the --images-out folder: {file name: digest, null while being written}


def outputs_of(paths: list[Path]) -> list[str]:
    """The names ``predict_photos`` writes for these photos: a mask and an overlay each, and masks.csv."""
    return [name for p in paths for name in (f"{p.stem}_mask.png", f"{p.stem}_overlay.jpg")] + [MASKS_CSV]


def _digest(path: Path) -> str:
    return fingerprint.digest_bytes(path.read_bytes())


def written_before(out: Path) -> dict[str, str | None]:
    """What earlier runs of ``predict_photos`` wrote in ``out`` ({name: digest, None while a run was writing it});
    an unreadable or damaged record counts as none (nothing is then taken for ours)."""
    import json
    try:
        record = json.loads((out / WRITTEN).read_text())
    except (OSError, ValueError):
        return {}
    return {} if files.schema_problem(record, files.MapOf((str, type(None)))) else record


def check_overwrites(out: Path, names: list[str], overwrite: bool) -> dict[str, str | None]:
    """PipelineError, before anything is written, if a file to be written exists and is not one an earlier run
    wrote (or was changed since): the project never replaces a file it did not write unless asked (--overwrite).
    Returns the record of what earlier runs wrote."""
    ours = written_before(out)
    theirs = [n for n in names if (out / n).exists() and not overwrite and
              (n not in ours or (ours[n] is not None and ours[n] != _digest(out / n)))]
    if theirs:
        from params import rerun
        again = rerun("--overwrite")
        raise PipelineError(f"{out / theirs[0]}: exists and was not written by 03_predict.py --images (or was changed "
                            f"since){listing(theirs[1:], 0, more=', and {} more')}; nothing was "
                            f"written: give another --images-out, or replace them: {again}")
    return ours


def _record(out: Path, record: dict[str, str | None]) -> None:
    files.write_json(out / WRITTEN, dict(sorted(record.items())))


def _named_like_photos(folder: Path) -> list[Path]:
    """The entries of ``folder`` named like photos (a photo extension, not hidden), sorted: files, and anything else
    so named (a folder ``x.png``), which ``predict_photos`` then skips by name rather than leaving out unsaid."""
    return sorted(Path(e.path) for e in os.scandir(folder)
                  if not e.name.startswith(".") and split_name(e.name, PHOTO_EXTS) is not None)


def photo_paths(sources: list[str]) -> list[Path]:
    """Files, folders (their photos, sorted) and glob patterns (``**`` for any depth) -> photo paths in that order,
    each once. In a folder, the masks and overlays an earlier run wrote there are not photos. Entries named like
    photos that are not files are kept: ``predict_photos`` skips them with a line each."""
    out: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            ours = written_before(path)
            found = [p for p in _named_like_photos(path) if p.name not in ours]
        elif any(c in source for c in "*?[") and not path.exists():  # '**' matches any depth of folders
            found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).suffix.lower() in PHOTO_EXTS)
        elif path.is_file():
            found = [path]
        else:
            raise PipelineError(f"{source}: no such file or folder (--images takes photos, folders and globs)")
        if not found:
            where = "matches no photo" if not path.exists() else "holds no photo"
            raise PipelineError(f"{source}: {where} ({', '.join(sorted(PHOTO_EXTS))})")
        out += [p for p in found if p not in out]
    stems: dict[str, Path] = {}
    for p in out:
        if p.stem in stems:
            raise PipelineError(f"{p} and {stems[p.stem]}: two photos named {p.stem}; their masks would have the "
                                "same name: predict them in two runs with different --images-out")
        stems[p.stem] = p
    return out


def choose_tta_threshold(p: Params, ens: Ensemble) -> tuple[str, float, str, float, str]:
    """(TTA mode, threshold, post-processing, minimum mask area, where they come from): --tta/--threshold/--postprocess
    when given, else a sound tuning.json of these models, else hflip, 0.5 and none; the minimum area (a fraction of
    the image, binary masks) is the tuning's, else 0 (no gating)."""
    run = files.run_dir(p.output_dir, p.experiment)
    tuning, why = None, f"no {files.TUNING}"
    if (run / files.TUNING).exists():
        try:
            tuning = tuning_mod.read(run)
            if tuning.predictors != ens.fingerprints:
                tuning, why = None, f"{files.TUNING} was made by other models"
        except PipelineError as e:
            why = f"unusable {files.TUNING} ({e})"
    mode = p.tta if p.tta != "auto" else (tuning.tta if tuning else tta.AUTO_DEFAULT)
    tta.check(mode, *ens.size)
    threshold = p.threshold or (tuning.threshold if tuning else DEFAULT_THRESHOLD)
    post = p.postprocess if p.postprocess != "auto" else (tuning.postprocess if tuning else postprocess.NONE)
    source = "tuned" if tuning and not (p.tta != "auto" and p.threshold and p.postprocess != "auto") else why
    return mode, threshold, ens.task.post_choices(post)[0], tuning.min_area if tuning else 0.0, source


class _Photos(TestImages):
    """``TestImages`` of photos where one that cannot be read or decoded gives ``(i, why)`` instead of failing the
    batch (in a loader worker: the reason crosses back as text)."""

    def __getitem__(self, i: int):
        try:
            return super().__getitem__(i)
        except PipelineError as e:
            return i, str(e)
        except (OSError, ValueError, cv2.error) as e:  # a decoder's own failure on odd bytes or modes
            return i, f"{self.paths[i]}: not a readable image ({type(e).__name__}: {e})"


def _collate(items: list) -> tuple:
    """(the batch of the photos that decoded, or None, [(i, why) of those that did not])."""
    good = [item for item in items if len(item) == 4]
    return (default_collate(good) if good else None), [item for item in items if len(item) == 2]


def unreadable_before_decoding(path: Path) -> str | None:
    """Why ``path`` is no photo to decode, from what is known without decoding it (not a file; a header above
    --max-image-mp), or None."""
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "gone (deleted meanwhile)"
        return f"{path}: {kind}, not a photo"
    try:
        image_header_size(path)  # a photo too large to decode whole is skipped before anything is decoded
    except PipelineError as e:
        return str(e)
    return None


def _skip(skipped: dict[int, str], i: int, why: str) -> None:
    skipped[i] = why
    tqdm.write(f"skipped {why}", file=sys.stderr)


def predict_photos(p: Params, sources: list[str], out_dir: Path | None = None, folds: list[int] | None = None,
                   overwrite: bool = False) -> Path:
    """Write ``<stem>_mask.png`` (0/255 at the photo's size), ``<stem>_overlay.jpg`` and a masks.csv of
    ``img,rle_mask`` rows (RLE in --rle-order) for every photo that can be read; return the folder. Each photo that
    cannot be read is skipped with a line naming it and why, and counted at the end; PipelineError when none could
    be. A file there that this function did not write is never replaced, unless ``overwrite``."""
    paths = photo_paths(sources)
    ens = load_fold_models(p, folds)
    mode, threshold, post, min_area, source = choose_tta_threshold(p, ens)
    out = out_dir or files.run_dir(p.output_dir, p.experiment) / "images"
    skipped: dict[int, str] = {}
    for i, path in enumerate(paths):
        if (why := unreadable_before_decoding(path)) is not None:
            _skip(skipped, i, why)
    if len(skipped) == len(paths):  # nothing written, nothing decoded
        raise PipelineError(_none_predicted(skipped))
    names = outputs_of(paths)
    record = check_overwrites(out, names, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    _record(out, record | dict.fromkeys(names))  # ours from now on, even if this run is killed
    decided = f"{ens.task.decision_text(threshold, post, min_area)} ({source})"
    models = "the full model" if ens.folds == [files.FULL] else f"{len(ens.models)} fold model(s)"
    todo = [i for i in range(len(paths)) if i not in skipped]
    print(f"{len(todo)} photo(s) with {models}, TTA {mode}, {decided} -> {out}", flush=True)
    start = time.perf_counter()
    predict = _tiled if p.tile_size else _whole
    written = predict(p, ens, mode, paths, todo, skipped, threshold, post, min_area, out)
    rows: dict[int, list[str]] = {}
    for i, codes, why in (f.result() for f in written):
        if why:
            _skip(skipped, i, why)
        else:
            rows[i] = codes
    done = [i for i in range(len(paths)) if i in rows]
    ours = [name for i in done for name in outputs_of([paths[i]])[:2]]
    left = _drop_skipped(out, record, [name for i in skipped for name in outputs_of([paths[i]])[:2]])
    if not rows:
        _record(out, left)
        raise PipelineError(_none_predicted(skipped))
    keys = {i: ens.task.row_ids(paths[i].name, paths[i].stem) for i in done}  # multi-class: a row a class
    lines = [files.csv_row("img", "rle_mask")] + [files.csv_row(k, code) for i in done
                                                   for k, code in zip(keys[i], rows[i])]
    files.write_text_atomic(out / MASKS_CSV, "".join(lines))
    _record(out, left | {name: _digest(out / name) for name in ours + [MASKS_CSV]})
    print(f"wrote {len(done)} masks, overlays and {out / MASKS_CSV} in {time.perf_counter() - start:.1f}s")
    if skipped:
        print(f"skipped {len(skipped)} of {len(paths)} file(s) that could not be read (each named above; "
              "no mask, no masks.csv row)")
    return out


def _whole(p: Params, ens: Ensemble, mode: str, paths: list[Path], todo: list[int], skipped: dict[int, str],
           threshold: float, post: str, min_area: float, out: Path) -> list:
    """Photos ``todo`` resized to the network size, predicted in batches: the futures of ``_write_photo``. A photo
    that does not decode is skipped (``_skip``), not the batch."""
    h, w = ens.size
    loader = DataLoader(_Photos([paths[i] for i in todo], h, w), batch_size=p.predict_batch_size,
                        num_workers=worker_count(p.workers), collate_fn=_collate)
    written = []
    with files.OrderedWriter(max(2, p.workers), 4 * p.predict_batch_size) as writer:
        for batch, bad in progress(loader, "photos", leave=True):
            for j, why in bad:
                _skip(skipped, todo[j], why)
            if batch is None:
                continue
            images, index, origs, _ = batch
            probs = predict_batch(ens, images, mode)
            written += [writer.submit(_write_photo, todo[j], paths[todo[j]], prob, tuple(orig.tolist()), threshold,
                                      out, p.rle_order, ens.task, post, min_area)
                        for j, prob, orig in zip(index.tolist(), probs, origs)]
    return written


def _tiled(p: Params, ens: Ensemble, mode: str, paths: list[Path], todo: list[int], skipped: dict[int, str],
           threshold: float, post: str, min_area: float, out: Path) -> list:
    """Photos ``todo`` at their own scale (shrunk by --downscale) predicted by sliding window (``tiles.sliding_window``,
    --predict-batch-size tiles at a time): the futures of ``_write_photo``. One photo is decoded at a time and at
    most two stitched maps wait for the writer, so memory follows the photo and the tile batch, not the folder. A
    photo that does not decode is skipped (``_skip``)."""
    predict = tile_predictor(ens, mode)
    written = []
    with files.OrderedWriter(2, 2) as writer:
        for i in progress(todo, "photos", leave=True):
            try:
                image, orig = tiles.read_scaled(read_image_bytes(paths[i]), paths[i], p.downscale)
            except PipelineError as e:
                _skip(skipped, i, str(e))
                continue
            except (OSError, ValueError, cv2.error) as e:  # a decoder's own failure on odd bytes or modes
                _skip(skipped, i, f"{paths[i]}: not a readable image ({type(e).__name__}: {e})")
                continue
            prob = tiles.sliding_window(predict, image, p.tile_size, p.tile_overlap, p.predict_batch_size)
            del image
            written.append(writer.submit(_write_photo, i, paths[i], ens.task.to_maps(torch.from_numpy(prob[None]))[0],
                                         orig, threshold, out, p.rle_order, ens.task, post, min_area))
    return written


def _none_predicted(skipped: dict[int, str]) -> str:
    """The error when every photo was skipped: the one reason, or the first and how many more."""
    first = skipped[min(skipped)]
    return first if len(skipped) == 1 else (f"none of the {len(skipped)} photos could be read, each skipped (named "
                                            f"above); the first: {first}")


def _drop_skipped(out: Path, record: dict[str, str | None], names: list[str]) -> dict[str, str | None]:
    """The record of what earlier runs wrote, less the mask and overlay of each photo skipped now; those files are
    deleted where an earlier run wrote them and nobody changed them since (they showed a photo that is no longer
    readable); a file of the user's (--overwrite) stays as it is, no longer counted as ours."""
    for name in names:
        if record.get(name) is not None and (out / name).is_file() and _digest(out / name) == record[name]:
            (out / name).unlink()
    return {k: v for k, v in record.items() if k not in names}


def _write_photo(i: int, path: Path, prob: np.ndarray, orig: tuple[int, int], threshold: float, out: Path,
                 rle_order: str = "row", task: Task = BINARY, post: str = postprocess.NONE, min_area: float = 0.0
                 ) -> tuple[int, list[str], str]:
    """Mask PNG (0/255, or the class index of each pixel), overlay and RLE(s) of one photo at its own size:
    (i, the RLEs, ""), or (i, [], why) when the photo does not decode whole (nothing written for it)."""
    try:
        image = cv2.imdecode(np.frombuffer(read_image_bytes(path), np.uint8),
                             cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)  # as stored, like the mask
    except PipelineError as e:
        return i, [], str(e)
    if image is None or image.shape[:2] != orig:
        return i, [], f"{path}: not a readable image (it does not decode whole)"
    decision = task.decide_maps([prob], [1.0], orig, threshold, post, min_area)
    png_values, shown = task.mask_pictures(image[..., ::-1], decision)
    ok1, png = cv2.imencode(".png", png_values)
    ok2, jpg = cv2.imencode(".jpg", shown[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not (ok1 and ok2):
        raise OSError(f"could not encode the mask or overlay of {path}")
    files.write_bytes_atomic(out / f"{path.stem}_mask.png", png.tobytes())
    files.write_bytes_atomic(out / f"{path.stem}_overlay.jpg", jpg.tobytes())
    return i, [rle.encode(m, rle_order) for m in task.class_masks(decision)], ""
