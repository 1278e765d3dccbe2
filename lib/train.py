"""One fold of training as plain functions: ``setup`` -> ``train_epoch`` / ``evaluate`` per epoch, ``train_fold`` looping.

In one process or under ``torchrun --nproc_per_node N`` (DistributedDataParallel), with the same schedule:
``--batch-size`` is the global batch, split over the ranks, and each epoch's permutation is the single-process one,
each global batch shared out by rank. Validation is sharded (contiguous chunks, no padding) and its sums reduced, so
val Dice and oof.npz cover the whole validation set. Only rank 0 writes (``RunWriter``) and prints.

Order of writes at the end of an epoch (each atomic): model.pt and oof.npz if val Dice improved, then the log row,
then last.pt. They are snapshots taken at the end of the epoch and written by one background thread, in that order,
while the next epoch trains. A run killed at any point resumes from the last written last.pt and, with the same seed
on CPU, ends with the same checkpoint as an uninterrupted run. A resumed run may use another number of processes:
the schedule is that of the global batch (BatchNorm statistics are per rank unless --sync-bn).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import params as params_mod
from lib import budget, files, folds as folds_mod, pseudo, tilecache, tiles as tiles_mod, tta
from lib.cache import Cache, open_for
from lib.data import SeededShuffle, TileSet, TrainSet, make_loader, tile_rows, train_transform, transform_for
from lib.errors import PipelineError, restart_advice
from lib.model import (CHECKPOINT, build_model, checkpoint_state, read_checkpoint, state_digest, unwrap,
                       write_checkpoint)
from lib.oof import PngMaps, class_dices, save_oof
from lib.plot import learning_curve, overlay_map
from lib.progress import progress
from lib.task import RECORD as TASK_RECORD, Task
from lib.runtime import Dist, Precision, loader_workers, pick_device, set_threads, use_compile
from params import Params, command, rerun

LOG_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_dice", "seconds", "images_per_s", "val_dice_raw"]
# val_dice_raw: with --ema, the val Dice of the trained weights themselves (val_dice is the average's); else empty
VAL_THRESHOLD = 0.5  # val Dice during training; 03_predict tunes the real threshold
PRODUCTS = (files.LAST, files.BEST, files.OOF)  # a fold folder holding any of these holds a run
BUDGET_COUNTS = ("epochs", "pseudo_epochs", "large_epochs")  # what --time-budget plans (checkpoints: "asked")
# what last.pt holds (RunWriter.epoch_end): everything --resume restores, checked before any of it is used
LAST_CHECKPOINT = {**CHECKPOINT, "epoch": int, "best": float, "bad_epochs": int,
                   "optimizer": {"state": dict, "param_groups": files.ListOf(dict)}, "scheduler": dict,
                   "scaler": dict, "rng": {"torch": torch.Tensor, "python": files.ListOf(int), "numpy": torch.Tensor,
                                           "numpy_pos": int},
                   "world?": int, "split?": str, "task?": TASK_RECORD, "ema?": dict,
                   "asked?": {k: int for k in BUDGET_COUNTS}}


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Schedule:
    """The learning-rate factor by optimiser step (``lr_factor``): warm-up, then cosine to ``min_ratio`` at ``total``;
    with ``--pseudo-epochs`` (``second`` steps) a second warm-up and cosine from step ``total``, peaking at
    ``second_peak``; with ``--large-epochs`` and ``--large-lr``, a third over their last ``third`` steps (the curve
    before them ends where they start), peaking at ``third_peak``. A callable object, so the scheduler's state_dict
    saves its fields, and a run extended with ``--resume --epochs N`` (N larger) stretches the first cosine to its
    new end: from its next step on, it follows the curve of an N-epoch run."""
    total: int
    warmup: int
    min_ratio: float
    second: int = 0
    second_peak: float = 1.0
    third: int = 0  # --large-epochs with --large-lr: the last ``third`` steps warm up and cosine again
    third_peak: float = 1.0

    def __call__(self, step: int) -> float:
        start = self.total + self.second - self.third
        if self.third and step >= start:
            return self.third_peak * lr_factor(step - start, self.third, self.warmup, self.min_ratio)
        if self.second and step >= self.total:
            return self.second_peak * lr_factor(step - self.total, self.second, self.warmup, self.min_ratio)
        return lr_factor(step, self.total, self.warmup, self.min_ratio)


def make_optimizer(p: Params, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW; fused (one kernel for all parameters instead of a loop of small ops) on CPU and CUDA."""
    opt = torch.optim.AdamW if p.optimizer == "adamw" else torch.optim.Adam
    decay = p.weight_decay if p.optimizer == "adamw" else 0.0
    return opt(model.parameters(), lr=p.lr, weight_decay=decay, fused=device.type in ("cpu", "cuda"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Global RNG states in a form weights_only checkpoints accept."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), None))
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))


# --- set-up ---
@dataclass
class Run:
    """Everything one rank needs to train one fold, and where the fold stands."""
    p: Params
    fold: int | str  # K, or "full" (files.FULL)
    dist: Dist
    device: torch.device
    dir: Path
    cache: Cache
    split: str  # folds.fold_digest: which images this fold trains and validates on (checkpoints carry it)
    val_ids: list[str]  # the fold's validation images, sorted (the order of oof.npz)
    val_rows: np.ndarray  # this rank's chunk of them, as cache rows
    net: torch.nn.Module  # the plain model (what checkpoints hold)
    model: torch.nn.Module  # net, or DistributedDataParallel(net)
    forward: torch.nn.Module  # model, or torch.compile(model)
    precision: Precision
    task: Task
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: Schedule  # the scheduler's factor by step (checkpoints keep it: an extended run's is not the default)
    sampler: SeededShuffle
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None  # None with --tile-size: validation by sliding window
    epoch: int = 0
    best: float = -1.0
    bad_epochs: int = 0
    tb: object | None = None  # a TensorBoard SummaryWriter on rank 0 with --tensorboard
    ema: AveragedModel | None = None  # --ema: the moving average of net's weights (what validates and predicts)
    tiles: tilecache.TileCache | None = None  # --tile-size: the images at the network's scale (same rows as cache)
    test_paths: list[Path] = field(default_factory=list)  # --pseudo-epochs: the test images it labels
    labelled: pseudo.Labelled | None = None  # once labelled: what the pseudo-label epochs train on besides the cache
    asked: dict | None = None  # --time-budget: the epochs the command line asked for before the plan (last.pt keeps it)

    @property
    def last_epoch(self) -> int:
        """--epochs, plus --pseudo-epochs where there are test images to label."""
        return self.p.epochs + (self.p.pseudo_epochs if self.test_paths else 0)


def check_run_folder(folder: Path, fold: int | str, resume: bool, restart: bool) -> None:
    """Refuse to overwrite a run, or to resume one that cannot be (read-only: a refused run writes nothing)."""
    if resume and restart:
        raise PipelineError("--resume continues a run and --restart deletes it: give one of them")
    found = [name for name in PRODUCTS if (folder / name).exists()]
    if found and not (resume or restart):
        raise PipelineError(f"{folder}: a run exists ({', '.join(found)}); add --resume to continue it "
                            f"({rerun('--resume')}), --restart to train it again from the start "
                            f"({command('02_train.py', '--fold', str(fold), '--restart')}), or choose another "
                            "--experiment (nothing was changed)")
    if resume and found and files.LAST not in found:
        raise PipelineError(f"{folder}: cannot resume, its {files.LAST} is missing (it holds {', '.join(found)}); "
                            + restart_advice(fold))


def setup(p: Params, fold: int | str, dist: Dist, resume: bool = False, restart: bool = False) -> Run:
    """Build one rank's Run for fold ``fold`` of the split in output/folds.csv, or for ``fold`` "full" (files.FULL:
    every image of the split trains, none validates). Nothing is written here."""
    split = folds_mod.read(p.output_dir)
    k = folds_mod.n_folds_of(split)
    full = fold == files.FULL
    index = k if full else fold  # seeds: the full model's are those a fold K would have
    if not full and not 0 <= fold < k:
        raise PipelineError(f"--fold {fold} is outside the split in {files.folds_csv(p.output_dir)} "
                            f"(folds 0..{k - 1}); every fold of it: {rerun('--fold', 'all')}")
    if p.batch_size % dist.world:
        raise PipelineError(f"--batch-size {p.batch_size} (the global batch) does not split over {dist.world} "
                            f"processes; use a multiple of {dist.world}")
    folder = files.fold_dir(p.output_dir, p.experiment, fold)
    files.check_unlocked(folder / files.LOCK, f"fold {fold} of {p.experiment}")  # a run in progress comes first
    if p.tensorboard and dist.main:
        tensorboard_writer_class()  # missing package: refused now, before anything is written
    check_run_folder(folder, fold, resume, restart)
    device = pick_device(p.device, dist.local_rank)
    set_threads(p.threads)
    cache = open_cache_once(p, list(split.id), dist)
    tiles = open_tiles_once(p, list(split.id), dist) if p.tile_size else None
    val_ids = [] if full else sorted(split.id[split.fold == fold])
    train_rows = cache.rows(sorted(split.id) if full else sorted(split.id[split.fold != fold]))
    if tiles is not None:  # an epoch of tiles: each image about as often as it holds tiles
        train_rows = tile_rows(train_rows, tiles.sizes, p.tile_size)
    if p.batch_size > len(train_rows):
        raise PipelineError(f"--batch-size {p.batch_size} is larger than the {len(train_rows)} "
                            f"training images of fold {fold}; lower it")
    chunks = np.array_split(np.arange(len(val_ids)), dist.world)  # contiguous, no padding: every image once
    val_rows = cache.rows([val_ids[i] for i in chunks[dist.rank]])

    seed_everything(p.seed + index)
    net = build_model(p, image_format=cache.image_format).to(device)
    if p.sync_bn and dist.active:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if p.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = net
    if dist.active:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    forward = torch.compile(model) if use_compile(p.compile, device) else model
    optimizer = make_optimizer(p, net, device)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(p.ema), use_buffers=True) if p.ema else None

    pin, workers = device.type == "cuda", loader_workers(p.workers, device, cache.cached or tiles is not None)
    task = Task.of(p)
    sampler = SeededShuffle(train_rows, p.seed * 1000 + index, rank=dist.rank, world=dist.world, batch=p.batch_size)
    if tiles is None:
        train_set = TrainSet(cache, transform_for(p, task.mask_interpolation, cache.image_format.rgb8))
        val_loader = make_loader(TrainSet(cache), SeededShuffle(val_rows, 0, shuffle=False),
                                 p.predict_batch_size, workers, pin)
    else:  # tiles are the crops: --crop-height/--crop-width do not apply
        transform = train_transform(p.hflip_p, p.shift_scale_rotate_p, p.color_p, task.mask_interpolation,
                                    (p.scale_low, p.scale_high), p.translate, p.border) if p.augment else None
        train_set, val_loader = TileSet(tiles, p.tile_size, p.tile_foreground, transform), None
    train_loader = make_loader(train_set, sampler, p.batch_size // dist.world, workers, pin, drop_last=True)
    precision, loss_fn = Precision.for_device(device, p.amp), task.loss(p.loss, p.bce_weight, p.dice_weight)
    test_paths = pseudo.test_paths(p) if p.pseudo_epochs else []
    asked = None
    if p.time_budget:
        p, asked = plan_budget(p, folder / files.LAST if resume else None, net, precision, loss_fn, train_loader,
                               test_paths, len(train_rows), cache.image_format, dist)
        test_paths = test_paths if p.pseudo_epochs else []  # a plan without pseudo-label epochs labels nothing
    steps_per_epoch = math.ceil(len(train_loader) / p.accum_steps)
    total, warmup = p.epochs * steps_per_epoch, max(1, round(p.warmup_epochs * steps_per_epoch))
    mixed = (len(train_rows) + len(test_paths)) // p.batch_size  # global batches an epoch on training + test images
    second = p.pseudo_epochs * math.ceil(mixed / p.accum_steps) if test_paths else 0
    large_mixed = min(p.large_epochs, p.pseudo_epochs) if test_paths else 0  # epochs on training + test images
    large_plain = min(p.epochs, p.large_epochs - large_mixed)
    third = (large_plain * steps_per_epoch + large_mixed * math.ceil(mixed / p.accum_steps)) if p.large_lr else 0
    schedule = Schedule(total, warmup, p.min_lr_ratio, second, p.pseudo_lr, third, p.large_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return Run(p, fold, dist, device, folder, cache, folds_mod.fold_digest(split, fold), val_ids, val_rows, net,
               model, forward, precision, task, loss_fn, optimizer, scheduler, schedule, sampler, train_loader,
               val_loader, ema=ema, tiles=tiles, test_paths=test_paths, asked=asked)


def plan_budget(p: Params, last: Path | None, net: torch.nn.Module, precision: Precision, loss_fn: torch.nn.Module,
                loader: torch.utils.data.DataLoader, test_paths: list[Path], n_train: int, fmt,
                dist: Dist) -> tuple[Params, dict | None]:
    """``p`` with the epochs that fit --time-budget (``lib/budget.py``), and the epochs asked for at the run's start
    (what its checkpoints keep; None for a checkpoint written before they kept them). A resumed
    run (its checkpoint ``last``) plans nothing: it trains what its start planned, except the counts its command line
    gives other than those asked at the start (``--resume --epochs N`` extends it as any run); else the plan comes
    from steps timed here (each rank times its own; rank 0's plan is everyone's)."""
    asked = {k: getattr(p, k) for k in BUDGET_COUNTS}
    saved = _saved_plan(last) if last is not None else None
    if saved is not None:
        planned, at_start = saved
        # a checkpoint written before last.pt kept "asked": the command line cannot be told from the start's
        counts = planned if at_start is None else \
            {k: planned[k] if asked[k] == at_start[k] else asked[k] for k in BUDGET_COUNTS}
        kept = dataclasses.replace(p, **counts)
        if dist.main and kept != p:
            print(_resumed_line(planned, at_start, counts), flush=True)
        return kept, at_start
    full = budget.Counts(p.epochs, p.pseudo_epochs if test_paths else 0, p.large_epochs)
    device = next(net.parameters()).device
    with _rng_kept():
        model = copy.deepcopy(net)
        small = time_step(model, p, loader, precision, loss_fn, p.small_scale) if p.large_epochs else 0.0
        large = time_step(model, p, loader, precision, loss_fn, 1.0)
        scale = p.small_scale if p.large_epochs and p.large_epochs <= full.pseudo else 1.0  # where labelling runs
        labelling = time_labelling(model, p, test_paths, fmt, device, precision, scale) if full.pseudo else 0.0
    timing = budget.Timing(len(loader), (n_train + len(test_paths)) // p.batch_size, small or large, large, labelling)
    planned = dist.broadcast(budget.fit(full, timing, p.time_budget * 60))
    if dist.main:
        size = params_mod.train_size(p)
        print(budget.describe(planned, full, timing, p.time_budget,
                              ("{}x{}".format(*tta.scaled_size(*size, p.small_scale)), "{}x{}".format(*size))),
              flush=True)
    return dataclasses.replace(p, epochs=planned.epochs, large_epochs=planned.large,
                               pseudo_epochs=planned.pseudo if test_paths else p.pseudo_epochs), asked


def _resumed_line(planned: dict, at_start: dict | None, counts: dict) -> str:
    """What a resumed budgeted run trains: its plan, or the counts its command line changed."""
    def shape(c: dict) -> str:
        return f"{c['epochs']} + {c['pseudo_epochs']} on labelled test images, the last {c['large_epochs']} large"
    if at_start is None:
        return (f"time budget: resumed with the epochs planned at its start: {shape(planned)} (its checkpoint does "
                "not record the epochs asked, so the command line's do not change them)")
    if counts == planned:
        return (f"time budget: resumed with the epochs planned at its start: {shape(planned)} (of {shape(at_start)} "
                "asked); --resume --epochs N, N other than the one asked, extends it to N")
    flags = ", ".join(f"--{k.replace('_', '-')} {counts[k]}" for k in BUDGET_COUNTS if counts[k] != planned[k])
    return (f"time budget: resumed with {flags} from the command line instead of the plan ({shape(planned)}): "
            f"{shape(counts)}")


def _saved_plan(last: Path) -> tuple[dict, dict | None] | None:
    """The epochs a resumable checkpoint was planned with and those its command line asked for (None in a
    checkpoint written before it kept them), read without loading its tensors; None where there is no checkpoint or
    it cannot be read (``restore`` then reports it)."""
    if not last.exists():
        return None
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        asked = ckpt.get("asked")
        return ({k: int(ckpt["params"][k]) for k in BUDGET_COUNTS},
                {k: int(asked[k]) for k in BUDGET_COUNTS} if asked is not None else None)
    except Exception:  # any damage: read_checkpoint names it when the run restores
        return None


@contextlib.contextmanager
def _rng_kept():
    """Every global generator as it was before the block (timing steps draws from them; training must not notice)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def time_step(model: torch.nn.Module, p: Params, loader: torch.utils.data.DataLoader, precision: Precision,
              loss_fn: torch.nn.Module, scale: float, warm: int = 4, steps: int = 6) -> float:
    """Seconds a training step takes at ``scale`` of the batch size (one batch from ``loader`` each, its loading
    included): the median over ``steps`` after ``warm`` steps, on ``model`` (a copy: its weights change) with an
    optimiser of its own."""
    device = next(model.parameters()).device
    model.train()
    optimizer = make_optimizer(p, model, device)
    task, ends = Task.of(p), []
    batches = (batch for _ in range(warm + steps) for batch in loader)  # short loaders: round again
    for _, (images, masks) in zip(range(warm + steps), batches):
        images = images.to(device, non_blocking=True)
        target = task.target(masks.to(device, non_blocking=True))
        if scale != 1.0:
            images, target = shrink(images, target, scale)
        if p.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            logits = model(images)
        loss = loss_fn(logits, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the device
        ends.append(time.perf_counter())
    return float(np.median(np.diff(ends[warm - 1:])))


def time_labelling(model: torch.nn.Module, p: Params, test_paths: list[Path], fmt, device: torch.device,
                   precision: Precision, scale: float) -> float:
    """Seconds labelling every test image would take, from labelling a few (after one to warm up)."""
    k = min(len(test_paths), max(4, p.predict_batch_size))
    pseudo.label(model, test_paths[:1], p, Task.of(p), fmt, device, precision, p.channels_last, "", False, scale)
    start = time.perf_counter()
    pseudo.label(model, test_paths[:k], p, Task.of(p), fmt, device, precision, p.channels_last, "", False, scale)
    return (time.perf_counter() - start) / k * len(test_paths)


def open_cache_once(p: Params, ids: list[str], dist: Dist) -> Cache:
    """The training data; under torchrun rank 0 builds what is missing while the other ranks wait for it."""
    if dist.main:
        cache = open_for(p, ids)
    dist.barrier()
    return cache if dist.main else open_for(p, ids)


def open_tiles_once(p: Params, ids: list[str], dist: Dist) -> tilecache.TileCache:
    """The tile cache (--tile-size); under torchrun rank 0 builds what is missing while the other ranks wait."""
    if dist.main:
        tiles = tilecache.open_for(p, ids)
    dist.barrier()
    return tiles if dist.main else tilecache.open_for(p, ids)


def may_change_on_resume(name: str) -> bool:
    """Whether 02 --resume accepts a changed setting ``name``: one training does not read, or one that changes where
    and how fast it runs, not what it learns (``params.Setting``)."""
    setting = params_mod.SETTINGS[name]
    return "02" not in setting.stages or setting.resumable


def restore(run: Run, ckpt: dict) -> None:
    """Continue from a last.pt state: weights, optimizer, schedule, scaler, RNG, where the fold stands."""
    if ckpt.get("split") != run.split:
        raise PipelineError(f"{run.dir / files.LAST}: trained on another split of the images (folds.csv changed since, "
                            "e.g. by 01_prepare.py --force): its weights have seen images that are now this fold's "
                            f"validation images; {restart_advice(run.fold)}")
    advice = restart_advice(run.fold, files.run_dir(run.p.output_dir, run.p.experiment))
    try:
        saved = params_mod.from_dict(ckpt["params"]).to_dict()
    except (ValueError, TypeError) as e:
        raise PipelineError(f"{run.dir / files.LAST}: its saved settings are invalid ({e}); {advice}") from None
    extend = run.p.epochs > saved["epochs"]  # --resume --epochs N, N larger: the schedule is stretched
    changed = [f"--{k.replace('_', '-')} {saved[k]} -> {v}" for k, v in run.p.to_dict().items()
               if not may_change_on_resume(k) and saved[k] != v and not (k == "epochs" and extend)]
    if changed:
        raise PipelineError(f"{run.dir / files.LAST}: resume with the settings it was trained with (same --preset "
                            f"and flags; --epochs may grow); changed: {', '.join(changed)}")
    new_total = run.schedule.total
    try:  # the keys and their types are checked (LAST_CHECKPOINT); what is inside them must fit this run too
        run.net.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])  # also the saved Schedule's fields, into run.schedule
        if extend:
            run.schedule.total = new_total
        run.precision.scaler.load_state_dict(ckpt["scaler"])
        if run.ema is not None:
            run.ema.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"])
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PipelineError(f"{run.dir / files.LAST}: damaged: its saved state does not fit this run "
                            f"({type(e).__name__}: {first}); {advice}") from None
    run.epoch, run.best, run.bad_epochs = ckpt["epoch"], ckpt["best"], ckpt["bad_epochs"]


def tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise PipelineError("--tensorboard needs the tensorboard package: pip install tensorboard "
                            "(or leave --tensorboard out; log.csv and curve.png are always written)") from None
    return SummaryWriter


# --- one epoch, one evaluation ---
def _to_device(run: Run, x: torch.Tensor) -> torch.Tensor:
    x = x.to(run.device, non_blocking=True)
    if run.p.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def shrinks(p: Params, epoch: int, last_epoch: int) -> bool:
    """Whether ``epoch`` (1-based) of a run ending at ``last_epoch`` trains on images shrunk by --small-scale: every
    epoch before the last --large-epochs (progressive resizing)."""
    return bool(p.large_epochs) and epoch <= last_epoch - p.large_epochs


def shrink(images: torch.Tensor, target: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch at ``scale`` (each side rounded to a multiple of 32, ``tta.scaled_size``): images and soft
    targets as the means of the pixels each new one covers (area, as the cache shrinks photos; images as float on
    the same value scale), labels by the nearest pixel."""
    size = tta.scaled_size(images.shape[-2], images.shape[-1], scale)
    images = F.interpolate(images.float(), size=size, mode="area")
    if target.is_floating_point():
        return images, F.interpolate(target, size=size, mode="area")
    return images, F.interpolate(target[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def train_epoch(run: Run) -> tuple[float, int]:
    """Train one epoch on this rank's share of every global batch; (mean loss over all ranks, images seen by all)."""
    p, loader = run.p, run.train_loader
    small = shrinks(p, run.epoch, run.last_epoch)
    run.model.train()
    run.sampler.set_epoch(run.epoch)
    total, count = 0.0, 0
    bar = progress(loader, f"fold {run.fold} epoch {run.epoch}", disable=not run.dist.main)
    run.optimizer.zero_grad(set_to_none=True)
    for i, (images, masks) in enumerate(bar):
        images, target = _to_device(run, images), run.task.target(_to_device(run, masks))
        if small:
            images, target = shrink(images, target, p.small_scale)
            if p.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        stepping = (i + 1) % p.accum_steps == 0 or i + 1 == len(loader)
        sync = contextlib.nullcontext() if stepping or not run.dist.active else run.model.no_sync()
        with sync:
            with run.precision.autocast(run.device):
                logits = run.forward(images)
            loss = run.loss_fn(logits, target)
            value = loss.item()
            if not math.isfinite(value):
                raise PipelineError(f"loss is {value} at fold {run.fold} epoch {run.epoch} batch {i}; stopped, the "
                                    f"last good checkpoint {run.dir / files.LAST} is kept. Lower --lr, or check the data")
            run.precision.scaler.scale(loss / p.accum_steps).backward()
        if stepping:
            if p.grad_clip > 0:
                run.precision.scaler.unscale_(run.optimizer)
                torch.nn.utils.clip_grad_norm_(run.net.parameters(), p.grad_clip)
            run.precision.scaler.step(run.optimizer)
            run.precision.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
            if run.ema is not None:
                run.ema.update_parameters(run.net)
            if run.tb is not None:
                run.tb.add_scalar("loss/train_step", value, run.scheduler.last_epoch)
                run.tb.add_scalar("lr", run.scheduler.get_last_lr()[0], run.scheduler.last_epoch)
        total += value * len(images)
        count += len(images)
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)  # drawn with the bar, not once more
    total, count = run.dist.sum(total, count)
    return total / max(count, 1), int(count)


@dataclass
class Evaluation:
    loss: float
    dice: float  # mean full-resolution Dice at VAL_THRESHOLD over the whole validation set
    probs: PngMaps | None  # the maps of every validation image in val_ids order, as PNG (rank 0 only)
    examples: tuple[np.ndarray, np.ndarray] | None = None  # rank 0: a few (images (N, 3, H, W), maps (N, H, W))
    class_dice: dict[str, float] = field(default_factory=dict)  # Task.by_class: mean Dice of each class


def predictor(run: Run) -> torch.nn.Module:
    """What validates, is saved as model.pt and predicts: the weights' moving average with --ema, else the model."""
    return run.ema.module if run.ema is not None else run.forward


@torch.no_grad()
def evaluate(run: Run, model: torch.nn.Module | None = None) -> Evaluation:
    """This rank's chunk of the validation set scored with ``model`` (default: ``predictor(run)``), then sums over
    the ranks and every map gathered on rank 0."""
    model = model if model is not None else predictor(run)
    model.eval()
    if run.tiles is not None:
        return _evaluate_tiled(run, model)
    losses, probs, examples = 0.0, [], None
    for images, masks in progress(run.val_loader, f"fold {run.fold} validation", disable=not run.dist.main):
        if examples is None:
            examples = images[:4].numpy()
        images, target = _to_device(run, images), run.task.target(_to_device(run, masks))
        with run.precision.autocast(run.device):
            logits = model(images)
        losses += run.loss_fn(logits, target).item() * len(images)
        probs.append(run.task.to_maps(run.task.probabilities(logits)))
    mine = np.concatenate(probs) if probs else np.zeros((0, *run.task.map_size(*run.cache.size)), np.uint8)
    per_class = class_dices(mine, run.cache, run.val_rows, VAL_THRESHOLD, run.task)  # (N, S)
    loss_sum, dice_sum, count, *class_sums = run.dist.sum(losses, float(per_class.mean(1).sum()), len(mine),
                                                          *per_class.sum(0).tolist())
    gathered = run.dist.gather(PngMaps.encode(mine))  # compressed where made: ~20x less to send and to keep
    return Evaluation(loss_sum / max(count, 1), dice_sum / max(count, 1),
                      PngMaps.join(gathered) if gathered is not None else None,
                      (examples, mine[:len(examples)]) if run.dist.main and examples is not None else None,
                      run.task.by_class([s / max(count, 1) for s in class_sums]))


def _evaluate_tiled(run: Run, model: torch.nn.Module) -> Evaluation:
    """``evaluate`` with --tile-size: each validation image of this rank at the network's scale (the tile cache)
    predicted by sliding window, scored at full resolution like whole images. No validation loss (the stitched map
    is not one forward pass: NaN in log.csv)."""
    p, task = run.p, run.task

    def predict(batch: np.ndarray) -> np.ndarray:
        images = _to_device(run, torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2))
        with run.precision.autocast(run.device):
            logits = model(images)
        return task.probabilities(logits).cpu().numpy()

    maps = []
    for row in progress(run.val_rows.tolist(), f"fold {run.fold} validation tiles", disable=not run.dist.main):
        prob = tiles_mod.sliding_window(predict, np.asarray(run.tiles.image(row)), p.tile_size, p.tile_overlap,
                                        p.predict_batch_size)
        maps.append(task.to_maps(prob[None])[0])  # quantized in place
    per_class = class_dices(maps, run.cache, run.val_rows, VAL_THRESHOLD, task)  # (N, S); N may be 0 on a rank
    dice_sum, count, *class_sums = run.dist.sum(float(per_class.mean(1).sum()), len(maps), *per_class.sum(0).tolist())
    gathered = run.dist.gather(PngMaps.join([PngMaps.encode(m[None]) for m in maps]))
    return Evaluation(float("nan"), dice_sum / max(count, 1), PngMaps.join(gathered) if gathered is not None else None,
                      None, task.by_class([s / max(count, 1) for s in class_sums]))


# --- files (rank 0) ---
def write_best(folder: Path, state: dict, val_ids: list[str], probs: PngMaps | None, tiling: dict | None = None
               ) -> None:
    """model.pt, then oof.npz; both record the model's digest (and the split), so 03 never tunes one model with
    another one's out-of-fold maps; oof.npz records the ``tiling`` of sliding-window maps. The full model (no
    validation images) has no oof.npz."""
    state["digest"] = state_digest(state["model"])
    write_checkpoint(folder / files.BEST, state)
    if probs is not None:
        save_oof(folder / files.OOF, val_ids, probs, state["digest"], state["split"], tiling)



class RunWriter:
    """What a fold run writes, from rank 0 only: params, log.csv and curve.png, model.pt and oof.npz, last.pt.

    Holds the fold folder's lock while the run lasts: a second process training the same fold is refused."""

    def __init__(self, run: Run):
        self.run, self.p = run, run.p
        self._lock = files.exclusive(run.dir / files.LOCK, f"fold {run.fold} of {run.p.experiment}")
        self._lock.__enter__()
        self.writer = files.OrderedWriter()
        if run.p.tensorboard:
            run.tb = tensorboard_writer_class()(str(files.run_dir(run.p.output_dir, run.p.experiment) / "tensorboard" /
                                                    f"fold{run.fold}"))

    def start(self, resumed: bool, restart: bool) -> None:
        p, folder = self.p, self.run.dir
        files.remove_stale_temps(folder)  # left by a killed run; never read as checkpoints
        if restart:  # --restart: the fold's earlier run goes, under the lock (no other process trains it)
            for name in (*PRODUCTS, files.LOG, files.CURVE):
                (folder / name).unlink(missing_ok=True)
        params_mod.save(p, files.run_dir(p.output_dir, p.experiment) / files.PARAMS)
        params_mod.save(p, folder / files.PARAMS)
        if resumed:
            log = self._log()
            files.write_text_atomic(folder / files.LOG, log[log.epoch <= self.run.epoch].to_csv(index=False))
        else:  # a log without any run product is what a run that never finished an epoch left: start it again
            (folder / files.LOG).unlink(missing_ok=True)

    def epoch_end(self, row: list, ev: Evaluation | None, improved: bool) -> None:
        """Queue this epoch's files (after waiting for the previous epoch's: a failed write stops the run here).
        The full model (no validation images) writes model.pt at its last epoch."""
        run, w = self.run, self.writer
        w.flush()
        if improved or (not run.val_ids and run.epoch == run.last_epoch):
            w.submit(write_best, run.dir, checkpoint_state(unwrap(predictor(run)), self.p, epoch=run.epoch,
                                                           val_dice=ev.dice if ev else -1.0,
                                                           split=run.split, task=run.task.checkpoint_record()),
                     run.val_ids, ev.probs if ev else None,
                     tiling.record() if (tiling := tiles_mod.Tiling.of(self.p)) else None)
        w.submit(self._append_log, row)
        if run.tb is not None:
            self._tensorboard(row, ev)
        w.submit(write_checkpoint, run.dir / files.LAST, checkpoint_state(
            run.net, self.p, epoch=run.epoch, best=run.best, bad_epochs=run.bad_epochs,
            optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
            scaler=run.precision.scaler.state_dict(), rng=rng_state(), world=run.dist.world, split=run.split,
            task=run.task.checkpoint_record(), **({"ema": run.ema.state_dict()} if run.ema is not None else {}),
            **({"asked": run.asked} if run.asked is not None else {})))

    def _tensorboard(self, row: list, ev: Evaluation | None) -> None:
        tb, epoch = self.run.tb, self.run.epoch
        tb.add_scalar("loss/train", row[2], epoch)
        tb.add_scalar("images_per_s", row[6], epoch)
        if ev is not None:
            tb.add_scalar("loss/val", ev.loss, epoch)
            tb.add_scalar("dice/val", ev.dice, epoch)
            for name, d in ev.class_dice.items():
                tb.add_scalar(f"dice/val_{name}", d, epoch)
            if ev.examples is not None:
                images, maps = ev.examples
                pictures = [overlay_map(np.ascontiguousarray(im.transpose(1, 2, 0)), m, self.run.task)
                            for im, m in zip(images, maps)]
                tb.add_images("val/overlays", np.stack(pictures), epoch, dataformats="NHWC")
        tb.flush()

    def _log(self) -> pd.DataFrame:
        return read_log(self.run.dir / files.LOG, restart_advice(self.run.fold))

    def _append_log(self, row: list) -> None:
        log = pd.concat([self._log(), pd.DataFrame([row], columns=LOG_COLUMNS)], ignore_index=True)
        files.write_text_atomic(self.run.dir / files.LOG, log.to_csv(index=False))
        learning_curve(log, self.run.dir / files.CURVE, f"{self.p.experiment} fold {self.run.fold}")

    def close(self, failed: bool) -> None:
        try:
            if failed:  # already failing: finish what was given (good states) without masking that error
                with contextlib.suppress(BaseException):
                    self.writer.close()
            else:
                self.writer.close()
        finally:
            if self.run.tb is not None:
                self.run.tb.close()
            self._lock.__exit__(None, None, None)


def read_log(path: Path, advice: str) -> pd.DataFrame:
    """A fold's log.csv (an empty one if there is none), checked: LOG_COLUMNS (val_dice_raw may be absent: older
    logs), numbers in every column, whole epoch numbers; else a PipelineError naming it and ending with ``advice``."""
    if not path.exists():
        return pd.DataFrame(columns=LOG_COLUMNS)
    advice += " (or delete it to resume without the rows of the earlier epochs)"
    try:
        log = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:  # UnicodeDecodeError is a ValueError
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise PipelineError(f"{path}: unreadable ({first}); {advice}") from None
    columns = list(log.columns)
    if columns not in (LOG_COLUMNS, LOG_COLUMNS[:-1]):
        raise PipelineError(f"{path}: damaged or not written by 02_train.py: columns {','.join(map(str, columns))[:160]}"
                            f", expected {','.join(LOG_COLUMNS)}; {advice}")
    if len(log) and not (all(pd.api.types.is_numeric_dtype(log[c]) for c in columns)
                         and pd.api.types.is_integer_dtype(log.epoch)):
        raise PipelineError(f"{path}: damaged or not written by 02_train.py: a row that is not numbers (epoch a whole "
                            f"number); {advice}")
    return log


# --- the loop ---
def train_fold(p: Params, fold: int | str, dist: Dist, resume: bool = False, restart: bool = False) -> dict:
    """Train (or continue, or start again) fold ``fold``; returns {fold, best_val_dice, epochs, labelled (test
    images it labelled), pseudo_epochs (epochs it trained on them too)}."""
    run = setup(p, fold, dist, resume, restart)
    p = run.p  # with --time-budget: the epochs it planned
    last = run.dir / files.LAST
    advice = restart_advice(fold, files.run_dir(p.output_dir, p.experiment))
    ckpt = read_checkpoint(last, run.device, advice, LAST_CHECKPOINT) if resume and last.exists() else None
    if ckpt is not None:
        restore(run, ckpt)
        read_log(run.dir / files.LOG, advice)  # checked before anything is written
    writer = RunWriter(run) if dist.main else None
    failed = True
    try:
        if writer:
            writer.start(resumed=ckpt is not None, restart=restart)
        _say(run, _start_line(run, resume, ckpt))
        _loop(run, writer)
        failed = False
    finally:
        if writer:
            writer.close(failed)
    if p.patience and run.bad_epochs >= p.patience and run.epoch < run.last_epoch:
        _say(run, f"fold {fold}: early stop, no val Dice gain for {p.patience} epochs")
    return {"fold": fold, "best_val_dice": run.best, "epochs": run.epoch,
            "labelled": len(run.labelled) if run.labelled is not None else 0,
            "pseudo_epochs": max(0, run.epoch - p.epochs)}


def _start_line(run: Run, resume: bool, ckpt: dict | None) -> str:
    p = run.p
    head = ""
    if resume and ckpt is None:
        head = f"fold {run.fold}: nothing to resume in {run.dir}; starting\n"
    elif ckpt is not None:
        head = f"fold {run.fold}: resumed after epoch {run.epoch} (best val Dice {run.best:.5f})"
        before = ckpt.get("world", 1)
        head += (f"; it ran on {before} process(es), now {run.dist.world}: the same global batch and schedule\n"
                 if before != run.dist.world else "\n")
    procs = f" x {run.dist.world} processes" if run.dist.active else ""
    amp = f" with {run.precision.name}" if run.precision.enabled else ""
    if run.tiles is not None:
        size = (f"{len(run.sampler.rows)} tiles of {p.tile_size} px an epoch from {len(set(run.sampler.rows.tolist()))} "
                f"train images at 1/{p.downscale:g} scale ({p.tile_foreground:.0%} on foreground) / {len(run.val_ids)} "
                f"val images by sliding window, {p.arch}-{p.encoder}")
    else:
        size = (f"{len(run.sampler.rows)} train / {len(run.val_ids)} val images, {p.arch}-{p.encoder} at "
                f"{p.height}x{p.width}")
    return head + f"fold {run.fold}: {size} on {run.device}{procs}{amp}, global batch {p.batch_size}"



def _say(run: Run, line: str) -> None:
    if run.dist.main:
        print(line, flush=True)


def _loop(run: Run, writer: RunWriter | None) -> None:
    p = run.p
    if p.pseudo_epochs and not run.test_paths:
        _say(run, f"fold {run.fold}: no test images in {p.input_dir / files.TEST} to label: --pseudo-epochs "
                  f"{p.pseudo_epochs} skipped, {p.epochs} epochs on the training images")
    while run.epoch < run.last_epoch and not (p.patience and run.bad_epochs >= p.patience):
        if run.epoch >= p.epochs and run.labelled is None and run.test_paths:
            start_pseudo(run)
        run.epoch += 1
        start = time.perf_counter()
        train_loss, n_images = train_epoch(run)
        train_seconds = time.perf_counter() - start
        validated = bool(run.val_ids) and (run.epoch % p.val_every == 0 or run.epoch in (p.epochs, run.last_epoch))
        with torch.random.fork_rng(devices=[]):  # starting the validation loader draws from torch's generator:
            ev = evaluate(run) if validated else None  # put back, so --val-every never changes what is learned
            raw = evaluate(run, run.forward).dice if ev is not None and run.ema is not None else float("nan")
        improved = False
        if ev is not None:
            improved = ev.dice > run.best
            run.best, run.bad_epochs = (ev.dice, 0) if improved else (run.best, run.bad_epochs + 1)
        val_loss, val_dice = (ev.loss, ev.dice) if ev else (float("nan"), float("nan"))
        row = [run.epoch, run.scheduler.get_last_lr()[0], train_loss, val_loss, val_dice,
               time.perf_counter() - start, n_images / train_seconds, raw]
        if writer:
            writer.epoch_end(row, ev, improved)
        validated = (f"val loss {val_loss:.4f} val Dice {val_dice:.5f} (best {run.best:.5f})" if ev else
                     f"not validated (--val-every {p.val_every})" if run.val_ids else "no validation images")
        if ev and run.ema is not None:
            validated += f" (without the average {raw:.5f})"
        if ev and ev.class_dice:
            validated += " [" + ", ".join(f"{n} {d:.4f}" for n, d in ev.class_dice.items()) + "]"
        at = ""
        if shrinks(p, run.epoch, run.last_epoch):
            at = " at {}x{}".format(*tta.scaled_size(*params_mod.train_size(p), p.small_scale))
        _say(run, f"fold {run.fold} epoch {run.epoch}/{run.last_epoch}: lr {row[1]:.2e} train loss {train_loss:.4f} "
                  f"{validated} {row[5]:.0f}s {row[6]:.1f} img/s{at}")


def start_pseudo(run: Run) -> None:
    """From epoch --epochs on: the test images labelled by the run's weights as they are after --epochs (rank 0
    labels and writes pseudo.npz once; a resumed run reads it), and a loader over the training images and them."""
    p, advice = run.p, restart_advice(run.fold, files.run_dir(run.p.output_dir, run.p.experiment))
    model = unwrap(predictor(run))
    scale = p.small_scale if shrinks(p, p.epochs, run.last_epoch) else 1.0  # the size epoch --epochs trained at
    digest = state_digest(model.state_dict()) + ("" if scale == 1.0 else f"@{scale}")
    shape = (len(run.test_paths), *run.cache.size, run.cache.image_format.channels)
    path = run.dir / pseudo.FILE
    if run.dist.main:
        if run.epoch > p.epochs:  # resumed within the pseudo-label epochs: the very labels they trained on
            if not path.exists():
                raise PipelineError(f"{path}: missing, and the run is past its --epochs {p.epochs}: the labels its "
                                    f"pseudo-label epochs trained on are gone; {advice}")
            found = pseudo.load(run.dir, shape, advice)
        else:  # at the boundary nothing has trained on a file left by a killed run: kept only if these weights made it
            try:
                found = pseudo.load(run.dir, shape, advice) if path.exists() else None
            except PipelineError:
                found = None
            found = found if found is not None and found.digest == digest else None
        if found is None:
            start = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                found = pseudo.label(model, run.test_paths, p, run.task, run.cache.image_format, run.device,
                                     run.precision, p.channels_last, digest, scale=scale)
            pseudo.save(run.dir, found)
            _say(run, f"fold {run.fold}: labelled {len(found)} test images{pseudo.sample_note(p, len(found))} with the weights "
                      f"of epoch {run.epoch} "
                      f"(TTA {pseudo.labelling_tta(p, scale)}) in {time.perf_counter() - start:.0f}s; {p.pseudo_epochs} more "
                      f"epochs on {len(run.sampler.rows)} training + {len(found)} labelled images")
    run.dist.barrier()
    run.labelled = found if run.dist.main else pseudo.load(run.dir, shape, advice)
    train_set = run.train_loader.dataset
    first = len(train_set)
    rows = np.concatenate([run.sampler.rows, first + np.arange(len(run.labelled))])
    run.sampler = SeededShuffle(rows, run.sampler.seed, rank=run.dist.rank, world=run.dist.world, batch=p.batch_size)
    run.train_loader = make_loader(pseudo.MixedSet(train_set, run.labelled, train_set.transform), run.sampler,
                                   p.batch_size // run.dist.world, run.train_loader.num_workers,
                                   run.device.type == "cuda", drop_last=True)
