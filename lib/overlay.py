"""Masks for any photos (``03_predict.py --images``): a mask PNG, an overlay picture and an RLE row per photo.

Needs only the experiment's fold models (output/<experiment>/fold*/model.pt): no folds.csv, no test set. The tuned
TTA and threshold are used when tuning.json is sound and was made by these models; else ``--tta`` (auto: hflip)
and ``--threshold`` (0: 0.5). Each photo is brought to the network size and its mask back to its own size.

One bad file never stops a batch: a photo that cannot be read or decoded (empty, truncated, not an image, a folder
named like one, too large for --max-image-mp) is skipped with one line naming it and why, and counted at the end; it
gets no mask and no masks.csv row. The run fails only when no photo at all could be predicted.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from lib import files, photos, postprocess, tiles, tta, tuning as tuning_mod
from lib.data import worker_count
from lib.errors import PipelineError
from lib.inputs import image_header_size
from lib.progress import progress
from lib.predict import (DEFAULT_THRESHOLD, Ensemble, TestImages, load_fold_models, predict_batch,
                         tile_predictor)
from params import Params, rerun


def choose_tta_threshold(p: Params, ens: Ensemble
                         ) -> tuple[str, float | tuple[float, ...], str, float | tuple[float, ...], str]:
    """(TTA mode, threshold, post-processing, minimum mask area, where they come from): --tta/--threshold/--postprocess
    when given, else a sound tuning.json of these models, else hflip, 0.5 and none; the minimum area (a fraction of
    the image; one per label or per class 1..C-1 of a multi-label or multi-class task) is the tuning's, else 0 (no
    gating)."""
    run = files.run_dir(p.output_dir, p.experiment)
    tuning, why = None, f"no {files.TUNING}"
    if (run / files.TUNING).exists():
        try:
            tuning = tuning_mod.read(run)
            if tuning.predictors != ens.fingerprints:
                tuning, why = None, f"{files.TUNING} was made by other models"
        except PipelineError as e:
            why = f"unusable {files.TUNING} ({e})"
    mode = tta.fixed(p.tta, p.tta_scales) if p.tta != "auto" else (tuning.tta if tuning
                                                                  else tta.fixed(tta.AUTO_DEFAULT, p.tta_scales))
    tta.check(mode, *((p.tile_size,) * 2 if p.tile_size else ens.size))
    threshold = p.threshold or (tuning.decision_threshold if tuning else DEFAULT_THRESHOLD)
    post = p.postprocess if p.postprocess != "auto" else (tuning.postprocess if tuning else postprocess.NONE)
    source = "tuned" if tuning and not (p.tta != "auto" and p.threshold and p.postprocess != "auto") else why
    return mode, threshold, ens.task.post_choices(post)[0], tuning.decision_min_area if tuning else 0.0, source


class _Photos(TestImages):
    """``TestImages`` of photos where one that cannot be read or decoded gives ``(i, why)`` instead of failing the
    batch (in a loader worker: the reason crosses back as text)."""

    def __getitem__(self, i: int):
        try:
            return super().__getitem__(i)
        except (PipelineError, *photos.DECODER_ERRORS) as e:
            return i, photos.unreadable(self.paths[i], e)


def _collate(items: list) -> tuple:
    """(the batch of the photos that decoded, or None, [(i, why) of those that did not])."""
    good = [item for item in items if len(item) == 4]
    return (default_collate(good) if good else None), [item for item in items if len(item) == 2]


def unreadable_before_decoding(path: Path) -> str | None:
    """Why ``path`` is no photo to decode, from what is known without decoding it (not a file; a header above
    --max-image-mp), or None."""
    if (why := photos.not_a_file(path)) is not None:
        return why
    try:
        image_header_size(path)  # a photo too large to decode whole is skipped before anything is decoded
    except PipelineError as e:
        return str(e)
    return None


def predict_photos(p: Params, sources: list[str], out_dir: Path | None = None, folds: list[int] | None = None,
                   overwrite: bool = False) -> Path:
    """Write ``<stem>_mask.png`` (0/255 at the photo's size), ``<stem>_overlay.jpg`` and a masks.csv of
    ``img,rle_mask`` rows (RLE in --rle-order) for every photo that can be read; return the folder. Each photo that
    cannot be read is skipped with a line naming it and why, and counted at the end; PipelineError when none could
    be. A file there that this function did not write is never replaced, unless ``overwrite`` (lib/photos.py)."""
    paths = photos.photo_paths(sources)
    ens = load_fold_models(p, folds)
    mode, threshold, post, min_area, source = choose_tta_threshold(p, ens)
    out = out_dir or files.run_dir(p.output_dir, p.experiment) / "images"
    skipped = photos.Skipped(lambda line: tqdm.write(line, file=sys.stderr))
    for i, path in enumerate(paths):
        if (why := unreadable_before_decoding(path)) is not None:
            skipped.add(i, why)
    if len(skipped) == len(paths):  # nothing written, nothing decoded
        raise PipelineError(skipped.none_predicted())
    record = photos.claim(out, paths, overwrite, rerun("--overwrite"))
    decided = f"{ens.task.decision_text(threshold, post, min_area)} ({source})"
    models = "the full model" if ens.folds == [files.FULL] else f"{len(ens.models)} fold model(s)"
    todo = [i for i in range(len(paths)) if i not in skipped]
    print(f"{len(todo)} photo(s) with {models}, TTA {mode}, {decided} -> {out}", flush=True)
    start = time.perf_counter()
    predict = _tiled if p.tile_size else _whole
    written = predict(p, ens, mode, paths, todo, skipped, threshold, post, min_area, out)
    rows: dict[int, list[tuple[str, str]]] = {}
    for i, photo_rows, why in (f.result() for f in written):
        if why:
            skipped.add(i, why)
        else:
            rows[i] = photo_rows
    done = photos.finish(out, record, paths, rows, skipped)
    print(f"wrote {len(done)} masks, overlays and {out / photos.MASKS_CSV} in {time.perf_counter() - start:.1f}s")
    if skipped:
        print(skipped.summary(len(paths)))
    return out


def _whole(p: Params, ens: Ensemble, mode: str, paths: list[Path], todo: list[int], skipped: photos.Skipped,
           threshold: float, post: str, min_area: float, out: Path) -> list:
    """Photos ``todo`` resized to the network size, predicted in batches: the futures of ``photos.write_photo``. A photo
    that does not decode is skipped (``skipped.add``), not the batch."""
    h, w = ens.size
    loader = DataLoader(_Photos([paths[i] for i in todo], h, w, ens.image_format), batch_size=p.predict_batch_size,
                        num_workers=worker_count(p.workers), collate_fn=_collate)
    written = []
    with files.OrderedWriter(max(2, p.workers), 4 * p.predict_batch_size) as writer:
        for batch, bad in progress(loader, "photos", leave=True):
            for j, why in bad:
                skipped.add(todo[j], why)
            if batch is None:
                continue
            images, index, origs, _ = batch
            probs = predict_batch(ens, images, mode)
            written += [writer.submit(photos.write_photo, todo[j], paths[todo[j]], prob, tuple(orig.tolist()),
                                      threshold, out, p.rle_order, ens.task, post, min_area, ens.image_format,
                                      p.display_bands)
                        for j, prob, orig in zip(index.tolist(), probs, origs)]
    return written


def _tiled(p: Params, ens: Ensemble, mode: str, paths: list[Path], todo: list[int], skipped: photos.Skipped,
           threshold: float, post: str, min_area: float, out: Path) -> list:
    """Photos ``todo`` at their own scale (shrunk by --downscale) predicted by sliding window (``tiles.sliding_window``,
    --predict-batch-size tiles at a time): the futures of ``photos.write_photo``. One photo is decoded at a time and at
    most two stitched maps wait for the writer, so memory follows the photo and the tile batch, not the folder. A
    photo that does not decode is skipped (``skipped.add``)."""
    predict = tile_predictor(ens, mode)
    written = []
    with files.OrderedWriter(2, 2) as writer:
        for i in progress(todo, "photos", leave=True):
            try:
                image, orig = tiles.read_scaled(photos.read_image_bytes(paths[i]), paths[i], p.downscale)
            except (PipelineError, *photos.DECODER_ERRORS) as e:
                skipped.add(i, photos.unreadable(paths[i], e))
                continue
            prob = tiles.sliding_window(predict, image, p.tile_size, p.tile_overlap, p.predict_batch_size)
            del image
            maps = ens.task.to_maps(prob[None])[0]  # quantized in place
            written.append(writer.submit(photos.write_photo, i, paths[i], maps, orig, threshold, out, p.rle_order,
                                         ens.task, post, min_area))
    return written
