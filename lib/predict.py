"""Fold ensembles: out-of-fold tuning of TTA and threshold, and test inference.

Tuning scores every fold model on its own validation images at full resolution, for every TTA
mode, from per-image Dice histograms (one pass over the pixels finds every threshold's score).
Test inference averages the fold models' probabilities and writes one uint8 PNG per image,
atomically, so a re-run skips finished images and an interrupted run resumes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import pandas as pd

from lib import (files, fingerprint, folds as folds_mod, imageformat, inputs, postprocess, testmaps, tiles, tta,
                 tuning as tuning_mod)
from lib.cache import decode_net_image, open_for
from lib.photos import read_image_bytes
from lib.data import SeededShuffle, TrainSet, make_loader, worker_count
from lib.errors import PipelineError, restart_advice, steps
from lib.imageformat import RGB8, ImageFormat
from lib.model import load_model, read_checkpoint, state_digest, unwrap
from lib.progress import progress
from lib.oof import PngMaps, load_oof
from lib.task import Task
from lib.tuning import Tuning
from lib.runtime import Dist, Precision, loader_workers, pick_device, set_threads, shard_of
import params as params_mod
from params import Params


DEFAULT_THRESHOLD = 0.5  # without a tuning (no fold models) and without --threshold


@dataclass
class Ensemble:
    """The fold models of one experiment, all at one network size."""
    models: list[nn.Module]
    folds: list[int]
    fingerprints: list[dict]  # per fold: epoch and val Dice of the checkpoint, to detect retrained models
    params: Params  # the first checkpoint's settings (size, encoder, ...)
    device: torch.device
    precision: Precision
    task: Task
    channels_last: bool = True  # models and inputs in NHWC memory format

    @property
    def size(self) -> tuple[int, int]:
        return self.params.height, self.params.width

    @property
    def image_format(self) -> ImageFormat:
        """The format of the images the models take (their training set's: lib/imageformat.py)."""
        return unwrap(self.models[0]).image_format


def load_ensemble(p: Params, split: pd.DataFrame, only: list[int] | None = None, local_rank: int = 0,
                  optional: bool = False) -> Ensemble | None:
    """The fold models of ``p.experiment`` (every fold of the split ``split``, folds.csv, or the folds ``only``), each
    rebuilt from its own checkpoint; None when ``optional`` and no fold has a model."""
    k_all = folds_mod.n_folds_of(split)
    ks = list(range(k_all)) if only is None else sorted(set(only))
    outside = [k for k in ks if not 0 <= k < k_all]
    if outside:
        fit = _fitting(p, split, list(range(k_all)))
        raise PipelineError(f"--folds {','.join(map(str, outside))}: the split in {files.folds_csv(p.output_dir)} "
                            f"has folds 0..{k_all - 1}; " + (
                                f"the folds with a model of this split: {params_mod.rerun('--folds', _folds(fit))}"
                                if fit else "no fold has a model of this split yet: train them with "
                                f"{params_mod.command('02_train.py', '--fold', 'all', '--restart')}"))
    missing = [k for k in ks if not (files.fold_dir(p.output_dir, p.experiment, k) / files.BEST).exists()]
    if optional and len(missing) == len(ks):
        return None
    if missing:
        raise PipelineError(_unfit_folds(p, split, ks, missing))
    return _load_models(p, ks, pick_device(p.device, local_rank), split)


def _unfit_folds(p: Params, split: pd.DataFrame, ks: list[int], missing: list[int]) -> str:
    """The error when folds ``missing`` of ``ks`` have no model: which folds cannot be used (no model, or one trained
    on another split than ``split``), the 02_train.py commands that train them, and, when some folds fit the split,
    this command with ``--folds`` of those: advice that names only folds 03 will accept."""
    run = files.run_dir(p.output_dir, p.experiment)
    fit = _fitting(p, split, [k for k in ks if k not in missing])
    stale = [k for k in ks if k not in missing and k not in fit]
    bad = sorted(missing + stale)

    def how(ks: list[int]) -> list[str]:  # 02 refuses a fold folder with files unless told what to do with them
        started = [k for k in ks if (files.fold_dir(p.output_dir, p.experiment, k) / files.LAST).exists()]
        return ["--restart"] if set(ks) & set(stale) else ["--resume"] if started else []
    if bad == list(range(folds_mod.n_folds_of(split))):
        train = [params_mod.command("02_train.py", "--fold", "all", *how(bad), drop=("folds",))]
    else:
        train = [params_mod.command("02_train.py", "--fold", str(k), *how([k]), drop=("folds",)) for k in bad]
    if stale and (run / files.TEST_PROBS).is_dir():
        train.append(params_mod.command("03_predict.py", "--replace"))  # the old models' maps go (restart_advice)
    what = "; ".join(([f"no model for fold(s) {','.join(map(str, missing))}"] if missing else []) + (
        [f"fold(s) {','.join(map(str, stale))} trained on another split of the images than "
         f"{files.folds_csv(p.output_dir)} (re-split since, or a checkpoint from elsewhere): their out-of-fold scores "
         "would be wrong"] if stale else []))
    only = (f", or ensemble the folds that fit the split only: {params_mod.rerun('--folds', _folds(fit))}"
            if fit else "")
    return f"{run}: {what}; train them first: {steps(*train)}{only}"


def _fitting(p: Params, split: pd.DataFrame, ks: list[int]) -> list[int]:
    """The folds of ``ks`` whose model.pt exists and was trained on the split ``split`` (``folds.fold_digest``)."""
    paths = {k: files.fold_dir(p.output_dir, p.experiment, k) / files.BEST for k in ks}
    return [k for k in ks if paths[k].exists()
            and read_checkpoint(paths[k]).get("split") == folds_mod.fold_digest(split, k)]


def _folds(ks: list[int]) -> str:
    return ",".join(map(str, ks))


def load_final(p: Params, split: pd.DataFrame, only: list[int] | None = None, local_rank: int = 0
               ) -> Ensemble | None:
    """The model fitted on every training image of ``split`` (``02_train.py --fold full``) when it exists and
    ``--folds`` does not ask for fold models: what predicts the test set then."""
    path = files.fold_dir(p.output_dir, p.experiment, files.FULL) / files.BEST
    if only is not None or not path.exists():
        return None
    return _load_models(p, [files.FULL], pick_device(p.device, local_rank), split)


def load_fold_models(p: Params, only: list[int] | None = None) -> Ensemble:
    """The model fitted on every image (full/model.pt) if there is one and ``only`` is not given, else the fold
    models found in output/<experiment>/fold*/model.pt (or the folds ``only``), without folds.csv: for predicting
    photos, where no split is scored."""
    run = files.run_dir(p.output_dir, p.experiment)
    if only is None and (run / files.FULL / files.BEST).exists():
        return _load_models(p, [files.FULL], pick_device(p.device), None)
    found = sorted(int(d.name[4:]) for d in run.glob("fold*") if d.name[4:].isdigit() and (d / files.BEST).exists())
    ks = found if only is None else sorted(set(only))
    missing = [k for k in ks if k not in found]
    if missing:
        have = [k for k in ks if k in found] or found
        use = (f" first, or use the folds that have one: {params_mod.rerun('--folds', _folds(have))}" if have
               else " first")
        raise PipelineError(f"{run}: no model.pt for fold(s) {_folds(missing)}; train with "
                            + steps(*(params_mod.command('02_train.py', '--fold', str(k)) for k in missing))
                            + use + ", or give the --experiment (and --output) the models are in")
    if not ks:
        raise PipelineError(_no_models(p, run))
    return _load_models(p, ks, pick_device(p.device), None)


OUTPUT_GLOB = "output*"  # the folders beside --output where runs are also looked for
RUN_DEPTH = 2  # trained runs are looked for this many folders deep under an output folder (output/demo/demo)


def trained_runs(output: Path) -> list[Path]:
    """The run folders holding a trained model (fold*/model.pt or full/model.pt) under ``output`` and under each
    ``output*`` folder beside it, up to RUN_DEPTH folders deep, each once, sorted."""
    roots = [output] + sorted(d for d in output.parent.glob(OUTPUT_GLOB)
                              if d.is_dir() and d.resolve() != output.resolve())
    runs: dict[Path, Path] = {}
    for root in roots:
        for depth in range(1, RUN_DEPTH + 1):
            for model in sorted(root.glob("/".join(["*"] * depth + ["*", files.BEST]))):
                fold = model.parent.name
                if fold == files.FULL or (fold.startswith("fold") and fold[4:].isdigit()):
                    runs.setdefault(model.parent.parent.resolve(), model.parent.parent)
    return sorted(runs.values())


def _no_models(p: Params, run: Path) -> str:
    """The error when ``run`` has no model: the runs that have one, each with the command that uses it (the user's
    own arguments and flags, its --output and --experiment), or how to train one."""
    runs = trained_runs(p.output_dir)
    if not runs:
        return (f"{run}: no trained model (fold*/model.pt) here, nor in any run under {p.output_dir} or an output*/ "
                f"folder beside it; train one first: {params_mod.command('01_prepare.py')}, then "
                f"{params_mod.command('02_train.py', '--fold', 'all')}, or give the --output and --experiment the "
                "models are in")
    own = params_mod.without_flags(params_mod.RUN.get("args", []), ["--folds"])  # the listed run has its own folds
    script = params_mod.RUN.get("script", "03_predict.py")
    found = [f"{r} ({_models_in(r)}): {params_mod.command(script, *own, '--output', str(r.parent), '--experiment', r.name)}"
             for r in runs]
    return (f"{run}: no trained model (fold*/model.pt) in this run (--output {p.output_dir} --experiment "
            f"{p.experiment}); the runs found that have one, with the command for each: " + "; ".join(found))


def _models_in(run: Path) -> str:
    folds = sorted(int(d.name[4:]) for d in run.glob("fold*") if d.name[4:].isdigit() and (d / files.BEST).exists())
    full = ["the full model"] if (run / files.FULL / files.BEST).exists() else []
    return ", ".join(full + ([f"fold(s) {','.join(map(str, folds))}"] if folds else []))


def _load_models(p: Params, ks: list[int], device: torch.device, split) -> Ensemble:
    set_threads(p.threads)
    models, sizes, tasks, first, prints = [], set(), set(), None, []
    for k in ks:
        path = files.fold_dir(p.output_dir, p.experiment, k) / files.BEST
        advice = restart_advice(k, files.run_dir(p.output_dir, p.experiment))
        model, mp, ckpt = load_model(path, device, advice)
        if split is not None and ckpt.get("split") != folds_mod.fold_digest(split, k):
            if k != files.FULL:  # every fold that does not fit, each with its command, and the folds that do
                raise PipelineError(_unfit_folds(p, split, ks, []))
            raise PipelineError(f"{path}: trained on another split of the images than {files.folds_csv(p.output_dir)} "
                                f"(re-split since, or a checkpoint from elsewhere): its out-of-fold scores would be "
                                f"wrong; {advice}")
        if p.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
        sizes.add((mp.height, mp.width))
        tasks.add(Task.from_record(ckpt["task"]))
        prints.append({"fold": k, "epoch": int(ckpt.get("epoch", -1)), "val_dice": float(ckpt.get("val_dice", -1)),
                       "arch": mp.arch, "encoder": mp.encoder,
                       "digest": ckpt.get("digest") or state_digest(ckpt["model"])})
        first = first or mp
    if len(sizes) > 1:
        raise PipelineError(f"{files.run_dir(p.output_dir, p.experiment)}: fold models were trained at different "
                            f"sizes {sorted(sizes)}; an ensemble needs one size")
    if len(tasks) > 1:
        raise PipelineError(f"{files.run_dir(p.output_dir, p.experiment)}: fold models were trained for different "
                            f"tasks ({'; '.join(sorted(t.describe() for t in tasks))}); an ensemble needs one")
    formats = {unwrap(m).image_format for m in models}
    if len(formats) > 1:
        raise PipelineError(f"{files.run_dir(p.output_dir, p.experiment)}: fold models take images of different "
                            f"formats ({'; '.join(sorted(f.describe() for f in formats))}); an ensemble needs one")
    imageformat.check_tiles(formats.pop(), p.tile_size)  # 03 --tile-size reads 8-bit RGB only so far
    return Ensemble(models, ks, prints, first, device, Precision.for_device(device, p.amp), tasks.pop(),
                    p.channels_last)


@torch.no_grad()
def predict_probabilities(ens: Ensemble, images: torch.Tensor, mode: str, models: list[nn.Module] | None = None
                          ) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, channels, H, W) float32 mean probability of ``models`` (default all) with TTA
    ``mode``."""
    x = images.to(ens.device, non_blocking=True)
    if ens.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    models = models if models is not None else ens.models
    total = None
    with ens.precision.autocast(ens.device):
        for model in models:
            prob = tta.predict_proba(model, x, mode, ens.task)
            total = prob if total is None else total + prob
    return total / len(models)


def predict_batch(ens: Ensemble, images: torch.Tensor, mode: str, models: list[nn.Module] | None = None
                  ) -> np.ndarray:
    """(N, 3, H, W) uint8 -> N maps (``Task.to_maps``: (N, H, W) binary, (N, C * H, W) multi-class) of the mean
    probability of ``models`` (default all) with TTA ``mode``."""
    return ens.task.to_maps(predict_probabilities(ens, images, mode, models))


def tile_predictor(ens: Ensemble, mode: str, models: list[nn.Module] | None = None) -> tiles.TilePredictor:
    """``tiles.sliding_window``'s predictor: (N, th, tw, 3) uint8 tiles -> (N, channels, th, tw) float32
    probabilities of ``models`` (default all) with TTA ``mode``."""
    def predict(batch: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        return predict_probabilities(ens, images, mode, models).cpu().numpy()
    return predict


# --- tuning on out-of-fold predictions ---
def tune(p: Params, split: pd.DataFrame, ens: Ensemble) -> Tuning:
    """Pick TTA mode and post-processing (and for binary masks the threshold) on the pooled out-of-fold images of
    ``split``: ``Task.oof_stats`` of each fold, ``Task.pick`` over the folds (binary: per-image Dice histograms score
    every threshold and minimum area in one pass; multi-class: the argmax decides, each class's areas score every
    minimum area of that class, the mean Dice of the classes scores the choice; multi-label: each label's
    histograms). Ties go to the simpler choice (no TTA, none, no gating)."""
    h, w = ens.size
    modes = tta.candidates(p.tta, p.tta_modes, *input_size(p, ens.size), p.tta_scales)
    cache = open_for(p, list(split.id), h, w)
    task = ens.task
    posts = task.post_choices(p.postprocess)
    # per (TTA mode, post-processing), per fold: Task.oof_stats
    stats: dict[tuple[str, str], list[np.ndarray]] = {(m, q): [] for m in modes for q in posts}
    for k, model in zip(ens.folds, ens.models):
        val_ids = sorted(split.id[split.fold == k])
        rows = cache.rows(val_ids)
        for mode in modes:
            probs = _oof_probs(p, ens, model, cache, rows, val_ids, k, mode)
            for q, fold_stats in task.oof_stats(probs, cache, rows, posts).items():
                stats[mode, q].append(fold_stats)
    scores, best = [], {}
    for key, folds_stats in stats.items():
        mode, post = key
        threshold, dice, fold_dice, extra = task.pick(folds_stats, DEFAULT_THRESHOLD, p.gating == "auto")
        best[key] = (dice, threshold, extra.get("class_dice", {}), extra.get("min_area", 0.0),
                     tuple(extra.get("thresholds", {}).values()), tuple(extra.get("min_areas", {}).values()))
        gated = {"min_area": extra["min_area"]} if "min_area" in extra else {}
        for k, d in zip(ens.folds, fold_dice):
            scores.append({"name": f"fold {k} model", "tta": mode, "postprocess": post, "threshold": threshold,
                           "dice": d, **gated})
        scores.append({"name": f"{len(ens.folds)}-fold out-of-fold", "tta": mode, "postprocess": post,
                       "threshold": threshold, "dice": float(dice), **extra})
    key = max(stats, key=lambda k_: best[k_][0])  # the first of equals: the simpler one
    (mode, post), (dice, threshold, class_dice, min_area, label_thresholds, label_min_areas) = key, best[key]
    return Tuning(p.experiment, ens.folds, mode, post, threshold, dice, (h, w), cache.orig_size,
                  int(sum(len(x) for x in stats[key])), tta_asked(p), p.postprocess,
                  ens.fingerprints, task, scores, class_dice, min_area=min_area,
                  tiling=tiles.Tiling.of(p), gating_asked=p.gating, label_thresholds=label_thresholds,
                  label_min_areas=label_min_areas)


def _oof_probs(p: Params, ens: Ensemble, model: nn.Module, cache, rows: np.ndarray, val_ids: list[str],
               fold: int, mode: str) -> np.ndarray:
    """(N, h, w) uint8 out-of-fold maps: for mode 'none' training's oof.npz when this very model made it for these
    images with this tiling, else (and for the other modes) predicted now; with --tile-size by sliding window
    (``_tiled_maps``: each at its image's size at the network's scale)."""
    tiling = tiles.Tiling.of(p)
    if mode == "none":
        path = files.fold_dir(p.output_dir, p.experiment, fold) / files.OOF
        digest = ens.fingerprints[ens.folds.index(fold)]["digest"]
        try:
            oof = load_oof(path, advice="") if path.exists() else None
        except PipelineError as e:  # damaged: predicted again from model.pt, like the file of another model
            print(f"note: {e}: predicting its out-of-fold maps now from fold {fold}'s model.pt (the file is "
                  "left as it is)")
        else:
            if oof is not None and oof.ids == val_ids and oof.model == digest and \
                    oof.tiling == (tiling.record() if tiling else {}):
                return oof.probs
            if oof is not None and oof.ids == val_ids and oof.model == digest:
                print(f"note: {path} holds maps of other tiling settings than this run's: predicting its "
                      "out-of-fold maps now")
            else:
                print(f"note: {path} was not made by fold {fold}'s model.pt for these images (model replaced?): "
                      "predicting its out-of-fold maps now")
    if tiling is not None:
        return _tiled_maps(p, ens, tiling, [cache.pair(int(r))[0] for r in rows], mode, [model],
                           f"oof fold {fold} {mode} tiles")
    loader = make_loader(TrainSet(cache), SeededShuffle(rows, 0, shuffle=False), p.predict_batch_size,
                         loader_workers(p.workers, ens.device, cache.cached), ens.device.type == "cuda")
    out = [predict_batch(ens, images, mode, [model])
           for images, _ in progress(loader, f"oof fold {fold} {mode}")]
    return np.concatenate(out)


def tiled_map(ens: Ensemble, tiling: tiles.Tiling, image: np.ndarray, mode: str, batch: int,
              models: list[nn.Module] | None = None) -> np.ndarray:
    """(h, w, 3) uint8 image at the network's scale -> its stored map (``Task.to_maps``: (h, w) binary, (C * h, w)
    multi-class) by sliding window of ``models`` (default all) with TTA ``mode``, ``batch`` tiles at a time."""
    prob = tiles.sliding_window(tile_predictor(ens, mode, models), image, tiling.tile, tiling.overlap, batch)
    return ens.task.to_maps(prob[None])[0]  # quantized in place


class ScaledImages(Dataset):
    """Images read at the network's scale (``tiles.read_scaled``) for sliding-window prediction, one per item."""

    def __init__(self, paths: list[Path], downscale: float):
        self.paths, self.downscale = paths, downscale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, tuple[int, int], str]:
        """((h, w, 3) uint8 image at the network's scale, i, its original (H0, W0), its file's fingerprint text)."""
        path = self.paths[i]
        before = os.stat(path)
        raw = read_image_bytes(path)
        image, orig = tiles.read_scaled(raw, path, self.downscale)
        return image, i, orig, fingerprint.of_bytes(raw, before).text()


def _one(batch: list) -> tuple:
    return batch[0]


def scaled_images(p: Params, paths: list[Path], downscale: float) -> DataLoader:
    """``ScaledImages`` one at a time, decoded ahead in at most one worker (memory follows one or two images)."""
    return DataLoader(ScaledImages(paths, downscale), batch_size=1, collate_fn=_one,
                      num_workers=min(1, worker_count(p.workers)))


def _tiled_maps(p: Params, ens: Ensemble, tiling: tiles.Tiling, paths: list[Path], mode: str,
                models: list[nn.Module], desc: str) -> PngMaps:
    """The stored maps (``tiled_map``) of the images ``paths`` by ``models``, in order, kept as PNG bytes (a fold of
    large images is held compressed, not as raw maps)."""
    return PngMaps.join([PngMaps.encode(tiled_map(ens, tiling, image, mode, p.predict_batch_size, models)[None])
                         for image, _, _, _ in progress(scaled_images(p, paths, tiling.downscale), desc)])


# --- test inference ---
class TestImages(Dataset):
    def __init__(self, paths: list[Path], height: int, width: int, fmt: ImageFormat = RGB8):
        self.paths, self.height, self.width, self.fmt = paths, height, width, fmt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor, str]:
        """(image (C, H, W) of the models' format (uint8 RGB, ...) at the network size, i, its original (H0, W0), the text of its file's
        fingerprint: the map records it, so that a re-run sees whether the image changed since)."""
        path = self.paths[i]
        before = os.stat(path)  # then read: a file written meanwhile gets a newer time than the one recorded
        raw = read_image_bytes(path)
        image, orig = decode_net_image(raw, path, self.height, self.width, self.fmt)
        return torch.from_numpy(image).permute(2, 0, 1), i, torch.tensor(orig), fingerprint.of_bytes(raw, before).text()


def shard_batches(ids: list[str], batch: int, shard: tuple[int, int] = (0, 1)) -> list[list[str]]:
    """The batches of shard K of N: every N-th of the batches ``ids[j * batch:(j + 1) * batch]``, from the K-th.

    Any number of shards predicts the very batches one process would, so the maps are the same bytes."""
    k, n = shard
    return [ids[j:j + batch] for j in range(0, len(ids), batch)][k::n]


def predict_test(p: Params, ens: Ensemble, mode: str, ids: list[str], paths: dict[str, Path], out_dir: Path,
                 shard: tuple[int, int] = (0, 1)) -> dict:
    """Write ``out_dir/<id>.png`` for every id of shard ``shard`` (K, N) not already done. Returns counts and speed.

    A batch with any map missing is predicted whole, so a re-run after an interruption writes the same bytes as an
    uninterrupted run (and each shard resumes on its own).
    """
    files.remove_stale_temps(out_dir)  # half-written maps of a killed run (never under a final name)
    batches = shard_batches(ids, p.predict_batch_size, shard)
    tiling = tiles.Tiling.of(p)
    done = testmaps.finished(out_dir, [i for b in batches for i in b], paths, ens.task.map_size(*ens.size), ens.task,
                             tiling)
    todo = [i for batch in batches if any(f"{j}.png" not in done for j in batch) for i in batch]
    mine = sum(len(b) for b in batches)
    missing = sum(f"{i}.png" not in done for batch in batches for i in batch)
    where = f"shard {shard[0]}/{shard[1]}: " if shard[1] > 1 else ""
    print(f"test: {where}{mine - missing} of {mine} maps already done, {missing} to predict "
          f"with {len(ens.models)} model(s), TTA {mode}", flush=True)
    if not todo:
        return {"predicted": 0, "maps": mine, "images_per_s": float("nan")}
    start = time.perf_counter()
    if tiling is not None:
        _predict_tiled(p, ens, tiling, mode, [paths[i] for i in todo], todo, done, out_dir, where)
        seconds = time.perf_counter() - start
        return {"predicted": missing, "maps": mine, "seconds": seconds, "images_per_s": len(todo) / seconds}
    h, w = ens.size
    loader = DataLoader(TestImages([paths[i] for i in todo], h, w, ens.image_format), batch_size=p.predict_batch_size,
                        num_workers=worker_count(p.workers), pin_memory=ens.device.type == "cuda")
    with files.OrderedWriter(max(2, p.workers), 4 * p.predict_batch_size) as writer:  # bounded: memory stays flat
        for images, index, origs, sources in progress(loader, f"test {where}".rstrip(": "), leave=True):
            probs = predict_batch(ens, images, mode)
            for j, prob, orig, source in zip(index.tolist(), probs, origs, sources):
                if f"{todo[j]}.png" not in done:
                    writer.submit(testmaps.write_map, out_dir / f"{todo[j]}.png", prob, tuple(orig.tolist()),
                                  fingerprint.Fingerprint.from_record(source))
    seconds = time.perf_counter() - start
    return {"predicted": missing, "maps": mine, "seconds": seconds, "images_per_s": len(todo) / seconds}


def _predict_tiled(p: Params, ens: Ensemble, tiling: tiles.Tiling, mode: str, image_files: list[Path], todo: list[str],
                   done: set[str], out_dir: Path, where: str) -> None:
    """Test maps by sliding window, one image at a time (a tile batch in the network, at most two stitched maps
    waiting for the writer): each map at its image's size at the network's scale."""
    with files.OrderedWriter(2, 2) as writer:
        for image, j, orig, source in progress(scaled_images(p, image_files, tiling.downscale),
                                               f"test {where.rstrip(': ')} tiles".replace("  ", " "), leave=True):
            if f"{todo[j]}.png" in done:
                continue
            m = tiled_map(ens, tiling, image, mode, p.predict_batch_size)
            writer.submit(testmaps.write_map, out_dir / f"{todo[j]}.png", m, orig,
                          fingerprint.Fingerprint.from_record(source))


# --- the stage ---
def tta_asked(p: Params) -> str:
    """What tuning.json records as the TTA asked (--tta, --tta-modes for auto, --tta-scales): ``tta.asked_text``."""
    return tta.asked_text(p.tta, p.tta_modes, p.tta_scales)


def input_size(p: Params, size: tuple[int, int]) -> tuple[int, int]:
    """What the network is given: the tile (--tile-size) when tiled, else the models' ``size`` (h, w)."""
    return (p.tile_size, p.tile_size) if p.tile_size else size


def expected_models(ens: Ensemble | None, final: Ensemble | None) -> list[dict]:
    """The fingerprints a tuning.json records: the fold models that tuned it, then the full model if it predicts."""
    return (ens.fingerprints if ens else []) + (final.fingerprints if final else [])


def untuned(p: Params, split: pd.DataFrame, final: Ensemble) -> Tuning:
    """The record for a full model without fold models to tune on: --tta (auto: hflip), --threshold (0: 0.5) and
    --postprocess (auto: none)."""
    h, w = final.size
    mode = tta.fixed(tta.AUTO_DEFAULT if p.tta == "auto" else p.tta, p.tta_scales)
    tta.check(mode, *input_size(p, (h, w)))
    cache = open_for(p, list(split.id), h, w)
    return Tuning(p.experiment, [], mode, final.task.post_choices(p.postprocess)[0],
                  p.threshold or DEFAULT_THRESHOLD, -1.0, (h, w), cache.orig_size, 0,
                  tta_asked(p),
                  p.postprocess, final.fingerprints, final.task, [], tuned=False, final=files.FULL,
                  tiling=tiles.Tiling.of(p), gating_asked=p.gating)


def current_tuning(p: Params, ens: Ensemble | None, final: Ensemble | None = None) -> Tuning | None:
    """tuning.json if it is sound and was made for these models, --tta and --postprocess, else None (then it is made
    again)."""
    run = files.run_dir(p.output_dir, p.experiment)
    if not (run / files.TUNING).exists():
        return None
    try:
        old = tuning_mod.read(run, repair="tuning again")
    except PipelineError as e:
        print(f"note: {e}")
        return None
    return old if (old.models == expected_models(ens, final)
                   and old.tta_asked == tta_asked(p)
                   and old.postprocess_asked == p.postprocess and old.gating_asked == p.gating
                   and old.tiling == tiles.Tiling.of(p)) else None


def _post_text(tuning: Tuning) -> str:
    """', post-processing largest' for the tuning's messages; '' when there is none."""
    return f", post-processing {tuning.postprocess}" if tuning.postprocess != postprocess.NONE else ""


def tuning_for(p: Params, split: pd.DataFrame, ens: Ensemble | None, retune: bool, final: Ensemble | None = None
               ) -> Tuning:
    """TTA and threshold tuned out-of-fold on the fold models ``ens``; the full model ``final``, when given,
    predicts the test set with them. Without fold models: ``untuned``."""
    run = files.run_dir(p.output_dir, p.experiment)
    path = run / files.TUNING
    old = None if retune else current_tuning(p, ens, final)
    if old is not None:
        print(f"tuning: reusing {path}")
        return old
    if ens is None:
        tuning = untuned(p, split, final)
        tuning_mod.write(run, tuning)
        print(f"tuning: no fold models to tune on ({params_mod.command('02_train.py', '--fold', 'all')} trains "
              f"them): TTA {tuning.tta}{_post_text(tuning)}, "
              f"{tuning.task.decision_text(tuning.threshold, postprocess.NONE)} -> {path}")
        return tuning
    tuning = tune(p, split, ens)
    if final is not None:
        tuning = tuning.replace(models=expected_models(ens, final), final=files.FULL)
    tuning_mod.write(run, tuning)
    print("\n".join(tuning_mod.score_lines(tuning)))
    decided = tuning.task.decision_text(tuning.decision_threshold, postprocess.NONE, tuning.decision_min_area)
    print(f"tuning: TTA {tuning.tta}{_post_text(tuning)}, {decided}, out-of-fold Dice "
          f"{tuning.oof_dice:.5f} over {tuning.n_images} images -> {path}")
    if tuning.class_dice:
        print("  per class: " + ", ".join(f"{name} {d:.4f}" for name, d in tuning.class_dice.items()))
    return tuning


def test_dir_for(p: Params, tuning: Tuning, replace: bool) -> Path:
    """The test map folder; refuses (or with --replace clears) maps made by other models/settings."""
    out = files.run_dir(p.output_dir, p.experiment) / files.TEST_PROBS
    made_by = testmaps.MapsMeta.of(tuning)
    meta = out / files.PROBS_META
    if meta.exists():
        try:
            foreign = testmaps.read_meta(out, _replace_advice()) != made_by
        except PipelineError:
            if not replace:
                raise
            foreign = True  # damaged: nothing says what made the maps; --replace predicts them again
    else:
        foreign = out.is_dir() and any(out.glob("*.png"))  # maps without meta.json: not written here
    if foreign:
        if not replace:
            raise PipelineError(f"{out}: holds maps from other models or settings; add --replace to delete them "
                                f"and predict again ({params_mod.rerun('--replace')}), or use another --experiment")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not meta.exists() or foreign:  # every shard may get here: the same content, written once
        testmaps.write_meta(out, made_by)
    return out


def _replace_advice() -> str:
    return f"predict the maps again: {params_mod.command('03_predict.py', '--replace')}"


def run(p: Params, folds: list[int] | None = None, retune: bool = False, replace: bool = False,
        tune_only: bool = False, shard_text: str | None = None) -> None:
    """03_predict.py: tune on out-of-fold maps, then predict this process's shard of the test images (all of them in
    one process; under torchrun rank 0 tunes while the others wait; separate --shard jobs need the tuning first)."""
    dist = Dist.start(p.device)
    try:
        with contextlib.ExitStack() as held:  # the experiment's lock, once taken (lock_experiment)
            _run(p, folds, retune, replace, tune_only, shard_text, dist, held)
    finally:
        dist.close()


def lock_experiment(p: Params, shards: bool) -> contextlib.AbstractContextManager:
    """The lock on the experiment's tuning.json and test_probs/ (files.PREDICT_LOCK): shared by the separate
    ``--shard`` jobs of one tuning (they write maps only, each its own), exclusive for a run that may write tuning.json
    or meta.json or delete maps (every other 03; under torchrun rank 0 holds it for the job). 04 reads under a shared
    hold. Taken without waiting: a second writer is refused at once, naming the holder."""
    return files.locked(files.run_dir(p.output_dir, p.experiment) / files.PREDICT_LOCK,
                        f"the prediction folder of {p.experiment} (tuning.json, test_probs/)", shared=shards)


def _run(p: Params, folds: list[int] | None, retune: bool, replace: bool, tune_only: bool, shard_text: str | None,
         dist: Dist, held: contextlib.ExitStack) -> None:
    shard = shard_of(shard_text, dist)
    separate = shard_text is not None  # one of N separate jobs: tuning and map folder come from --tune-only
    if (replace or retune) and (dist.active or separate):
        raise PipelineError("--replace and --retune run in one process: use them without torchrun and --shard "
                            "(e.g. with --tune-only before the shards)")
    split = folds_mod.read(p.output_dir)  # once per run: every step below gets this table
    final = load_final(p, split, folds, dist.local_rank)  # the model fitted on every image, if trained
    ens = load_ensemble(p, split, folds, dist.local_rank, optional=final is not None)
    has_test = (p.input_dir / files.TEST).is_dir()
    ids, paths = inputs.check_test(p.input_dir, (final or ens).task) if has_test else ([], {})  # refuse before writing
    tta.candidates(p.tta, p.tta_modes, *input_size(p, (final or ens).size), p.tta_scales)  # scales that fit: likewise
    probs = files.run_dir(p.output_dir, p.experiment) / files.TEST_PROBS
    if has_test and not replace and (probs / files.PROBS_META).exists():  # damaged: refused before anything is written
        testmaps.read_meta(probs, _replace_advice())
    if dist.main:  # one writer: before tuning.json or a map is written (under torchrun rank 0 speaks for the job)
        held.enter_context(lock_experiment(p, shards=separate))
    tuning = tuning_for(p, split, ens, retune, final) if dist.main and not separate else None
    if dist.main and not separate:
        params_mod.save(p, files.run_dir(p.output_dir, p.experiment) / files.PREDICT_PARAMS)
    dist.barrier()  # the other ranks wait for rank 0's tuning
    tuning = tuning or current_tuning(p, ens, final)
    if tuning is None:
        raise PipelineError(f"{files.run_dir(p.output_dir, p.experiment) / files.TUNING}: missing or made for other "
                            f"models; run {params_mod.command('03_predict.py', '--tune-only')} first")
    if not has_test:
        print(f"note: no {p.input_dir / files.TEST} folder: tuned only, no test maps "
              "(04_submit.py can still compare with the baselines)")
        return _overlays(p, split, tuning, ens, final, [], {}) if dist.main and not separate else None
    out = test_dir_for(p, tuning, replace) if dist.main else None
    dist.barrier()
    out = out or test_dir_for(p, tuning, False)
    if tune_only:
        return print(f"tuned; test maps go to {out}: predict them with {params_mod.command('03_predict.py')}, or "
                     f"as N jobs, job K of them {params_mod.command('03_predict.py', '--shard', 'K/N')}")
    if final is not None and dist.main:
        print(f"test maps from {files.fold_dir(p.output_dir, p.experiment, files.FULL) / files.BEST} (fitted on every "
              "training image)" + (f"; TTA and threshold from the {len(ens.models)} fold models" if ens else ""))
    stats = predict_test(p, final or ens, tuning.tta, ids, paths, out, shard)
    predicted, seconds = dist.sum(stats["predicted"], stats.get("seconds", 0.0))
    if dist.main:
        what = f"shard {shard[0]}/{shard[1]} done, {stats['maps']} of the {len(ids)}" if separate else f"{len(ids)}"
        speed = f" ({int(predicted)} predicted, {predicted / seconds:.1f} images/s" if predicted else ""
        print(f"test maps: {what} in {out}" + (speed + (" per process)" if dist.active else ")") if speed else ""))
    if dist.main and not separate:
        _overlays(p, split, tuning, ens, final, ids, paths)


def _overlays(p: Params, split: pd.DataFrame, tuning: Tuning, ens: Ensemble | None, final: Ensemble | None,
              ids: list[str], paths: dict[str, Path]) -> None:
    """The run's overlays/ (lib/gallery.py), drawn in the class colours the checkpoints keep."""
    from lib import gallery
    gallery.write(p, split, tuning, ens, final or ens, ids, paths)
