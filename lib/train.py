"""One fold of training: loop, validation at full resolution, checkpoints, resume, out-of-fold output.

Order of writes at the end of an epoch (each atomic): model.pt and oof.npz if val Dice improved,
then the log row, then last.pt. They are snapshots taken at the end of the epoch and written by
one background thread, in that order, while the next epoch trains (the files of one epoch are
finished before the next epoch's are given). A run killed at any point resumes from the last
written last.pt and, with the same seed on CPU, ends with the same checkpoint as an uninterrupted run.
"""
from __future__ import annotations

import io
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import params as params_mod
from lib import files, folds as folds_mod
from lib.cache import open_for
from lib.data import TrainSet, SeededShuffle, make_loader, train_transform
from lib.errors import PipelineError
from lib.geometry import from_net
from lib.losses import BceDice
from lib.metrics import binarize, dice, dice_histograms
from lib.model import build_model, checkpoint_state, read_checkpoint, unwrap, write_checkpoint
from lib.plot import learning_curve
from params import Params

LOG_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_dice", "seconds", "images_per_s"]
VAL_THRESHOLD = 0.5
# settings a resumed run may change: where and how fast it runs, not what it learns
RESUMABLE_CHANGES = {"input", "output", "workers", "cache", "cache_budget_gb", "device", "threads", "compile",
                     "predict_batch_size",
                     "tta", "threshold", "submission", "force", "demo"}  # val Dice during training; 03_predict tunes the real threshold


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda if present else cpu; an explicit cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PipelineError(f"--device {name} asked for, but no CUDA GPU is visible; use --device cpu")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise PipelineError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    elif name != "cpu":
        raise PipelineError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


@dataclass
class Precision:
    """Autocast settings: bf16 where the GPU supports it, else fp16 with a gradient scaler; off on CPU."""
    enabled: bool
    dtype: torch.dtype
    scaler: torch.amp.GradScaler = field(repr=False)

    @classmethod
    def for_device(cls, device: torch.device, amp: bool) -> "Precision":
        enabled = amp and device.type == "cuda"
        bf16 = enabled and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float16
        return cls(enabled, dtype, torch.amp.GradScaler(device.type, enabled=enabled and not bf16))

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def loader_workers(workers: int, device: torch.device, cached: bool) -> int:
    """Loader processes: ``workers`` on GPU, or where items are decoded from JPEG; none on CPU reading the image
    cache, where the model needs every core and reading the memmap in the training process costs less than a
    worker competing with it (loader and step rates: benchmarks/bench_loader.py)."""
    return workers if device.type == "cuda" or not cached else 0


def use_compile(setting: str, device: torch.device) -> bool:
    """--compile on / off, or auto: on GPU only (there it pays for its minute or two of compiling within an epoch
    of the full data; on a CPU it costs minutes for little gain)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


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


class FoldTrainer:
    """Trains fold ``fold`` of the split in output/folds.csv; see module docstring for what it writes."""

    def __init__(self, p: Params, fold: int, resume: bool = False):
        self.p, self.fold, self.resume = p, fold, resume
        split = folds_mod.read(p.output_dir)
        k = folds_mod.n_folds_of(split)
        if not 0 <= fold < k:
            raise PipelineError(f"--fold {fold} is outside the split in {files.folds_csv(p.output_dir)} "
                                f"(folds 0..{k - 1})")
        self.dir = files.fold_dir(p.output_dir, p.experiment, fold)
        self._check_run_folder()
        self.device = pick_device(p.device)
        if p.threads:
            torch.set_num_threads(p.threads)
        self.cache = open_for(p, list(split.id))
        self.val_ids = sorted(split.id[split.fold == fold])
        self.train_rows = self.cache.rows(sorted(split.id[split.fold != fold]))
        self.val_rows = self.cache.rows(self.val_ids)
        if p.batch_size > len(self.train_rows):
            raise PipelineError(f"--batch-size {p.batch_size} is larger than the {len(self.train_rows)} "
                                f"training images of fold {fold}; lower it")
        seed_everything(p.seed + fold)
        self.model = build_model(p).to(self.device)
        if p.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if use_compile(p.compile, self.device) else self.model
        self.precision = Precision.for_device(self.device, p.amp)
        self.loss_fn = BceDice(p.bce_weight, p.dice_weight)
        self.optimizer = make_optimizer(p, self.model, self.device)
        pin = self.device.type == "cuda"
        transform = train_transform(p.hflip_p, p.shift_scale_rotate_p, p.color_p) if p.augment else None
        self.sampler = SeededShuffle(self.train_rows, p.seed * 1000 + fold)
        workers = loader_workers(p.workers, self.device, self.cache.cached)
        self.train_loader = make_loader(TrainSet(self.cache, transform), self.sampler, p.batch_size,
                                        workers, pin, drop_last=True)
        self.val_loader = make_loader(TrainSet(self.cache), SeededShuffle(self.val_rows, 0, shuffle=False),
                                      p.predict_batch_size, workers, pin)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / p.accum_steps)
        total = p.epochs * self.steps_per_epoch
        warmup = max(1, round(p.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total, warmup, p.min_lr_ratio))
        self.epoch, self.best, self.bad_epochs = 0, -1.0, 0

    # --- run folder ---
    def _check_run_folder(self) -> None:
        last = self.dir / files.LAST
        if last.exists() and not self.resume:
            raise PipelineError(f"{self.dir}: a run exists; add --resume to continue it, or choose another "
                                "--experiment (nothing was overwritten)")

    def _restore(self) -> None:
        last = self.dir / files.LAST
        if not last.exists():
            print(f"fold {self.fold}: nothing to resume in {self.dir}; starting", flush=True)
            return
        ckpt = read_checkpoint(last, self.device)
        saved = params_mod.from_dict(ckpt["params"]).to_dict()
        changed = [f"--{k.replace('_', '-')} {saved[k]} -> {v}" for k, v in self.p.to_dict().items()
                   if k not in RESUMABLE_CHANGES and saved[k] != v]
        if changed:
            raise PipelineError(f"{last}: resume with the settings it was trained with (same --preset and flags); "
                                f"changed: {', '.join(changed)}")
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.precision.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best, self.bad_epochs = ckpt["epoch"], ckpt["best"], ckpt["bad_epochs"]
        set_rng_state(ckpt["rng"])
        log = self._log()
        files.write_text_atomic(self.dir / files.LOG, log[log.epoch <= self.epoch].to_csv(index=False))
        print(f"fold {self.fold}: resumed after epoch {self.epoch} (best val Dice {self.best:.5f})", flush=True)

    def _log(self) -> pd.DataFrame:
        path = self.dir / files.LOG
        return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=LOG_COLUMNS)

    # --- the loop ---
    def run(self) -> dict:
        p = self.p
        self.dir.mkdir(parents=True, exist_ok=True)
        files.remove_stale_temps(self.dir)  # left by a killed run; never read as checkpoints
        params_mod.save(p, files.run_dir(p.output_dir, p.experiment) / files.PARAMS)
        params_mod.save(p, self.dir / files.PARAMS)
        if self.resume:
            self._restore()
        else:
            files.write_text_atomic(self.dir / files.LOG, ",".join(LOG_COLUMNS) + "\n")
        print(f"fold {self.fold}: {len(self.train_rows)} train / {len(self.val_rows)} val images, "
              f"{p.arch}-{p.encoder} at {p.height}x{p.width} on {self.device}"
              f"{' with ' + str(self.precision.dtype).split('.')[-1] if self.precision.enabled else ''}", flush=True)
        with files.OrderedWriter() as writer:
            self._loop(writer)
        if p.patience and self.bad_epochs >= p.patience and self.epoch < p.epochs:
            print(f"fold {self.fold}: early stop, no val Dice gain for {p.patience} epochs", flush=True)
        return {"fold": self.fold, "best_val_dice": self.best, "epochs": self.epoch}

    def _loop(self, writer: files.OrderedWriter) -> None:
        p = self.p
        while self.epoch < p.epochs and not (p.patience and self.bad_epochs >= p.patience):
            self.epoch += 1
            start = time.perf_counter()
            train_loss, n_images = self.train_epoch()
            train_seconds = time.perf_counter() - start
            validated = self.epoch % p.val_every == 0 or self.epoch == p.epochs
            val_loss, val_dice, probs = self.validate() if validated else (float("nan"), float("nan"), None)
            writer.flush()  # the previous epoch's files are written (and a failed write stops the run here)
            if validated:
                if val_dice > self.best:
                    self.best, self.bad_epochs = val_dice, 0
                    writer.submit(write_checkpoint, self.dir / files.BEST,
                                  checkpoint_state(self.model, p, epoch=self.epoch, val_dice=val_dice))
                    writer.submit(save_oof, self.dir / files.OOF, self.val_ids, probs)
                else:
                    self.bad_epochs += 1
            row = [self.epoch, self.scheduler.get_last_lr()[0], train_loss, val_loss, val_dice,
                   time.perf_counter() - start, n_images / train_seconds]
            writer.submit(self._append_log, row)
            writer.submit(write_checkpoint, self.dir / files.LAST, checkpoint_state(
                self.model, p, epoch=self.epoch, best=self.best, bad_epochs=self.bad_epochs,
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.precision.scaler.state_dict(), rng=rng_state()))
            print(f"fold {self.fold} epoch {self.epoch}/{p.epochs}: lr {row[1]:.2e} train loss {train_loss:.4f} "
                  f"val loss {val_loss:.4f} val Dice {val_dice:.5f} (best {self.best:.5f}) "
                  f"{row[5]:.0f}s {row[6]:.1f} img/s", flush=True)

    def _append_log(self, row: list) -> None:
        log = pd.concat([self._log(), pd.DataFrame([row], columns=LOG_COLUMNS)], ignore_index=True)
        files.write_text_atomic(self.dir / files.LOG, log.to_csv(index=False))
        learning_curve(log, self.dir / files.CURVE, f"{self.p.experiment} fold {self.fold}")

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.p.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def train_epoch(self) -> tuple[float, int]:
        p, model = self.p, self.model
        model.train()
        self.sampler.set_epoch(self.epoch)
        total, count = 0.0, 0
        bar = tqdm(self.train_loader, desc=f"fold {self.fold} epoch {self.epoch}", leave=False, dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, masks) in enumerate(bar):
            images, target = self._to_device(images), self._to_device(masks).float() / 255
            with self.precision.autocast(self.device):
                logits = self.forward(images)
            loss = self.loss_fn(logits, target)
            value = loss.item()
            if not math.isfinite(value):
                raise PipelineError(f"loss is {value} at fold {self.fold} epoch {self.epoch} batch {i}; "
                                    f"stopped, the last good checkpoint {self.dir / files.LAST} is kept. "
                                    "Lower --lr, or check the data")
            self.precision.scaler.scale(loss / p.accum_steps).backward()
            if (i + 1) % p.accum_steps == 0 or i + 1 == len(self.train_loader):
                if p.grad_clip > 0:
                    self.precision.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                self.precision.scaler.step(self.optimizer)
                self.precision.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            total += value * len(images)
            count += len(images)
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1), count

    @torch.no_grad()
    def validate(self) -> tuple[float, float, np.ndarray]:
        """(val loss, mean full-resolution Dice at 0.5, uint8 probabilities (N, H, W) at the network size)."""
        self.model.eval()
        losses, probs = [], []
        for images, masks in self.val_loader:
            images, target = self._to_device(images), self._to_device(masks).float() / 255
            with self.precision.autocast(self.device):
                logits = self.forward(images)
            losses.append(self.loss_fn(logits, target).item() * len(images))
            probs.append(to_uint8(torch.sigmoid(logits.float())))
        probs_u8 = np.concatenate(probs)
        dice = full_res_dice(probs_u8, self.cache, self.val_rows, VAL_THRESHOLD)
        return sum(losses) / len(self.val_rows), dice, probs_u8


def to_uint8(prob: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) probabilities in [0, 1] -> (N, H, W) uint8 levels (rounded)."""
    return (prob[:, 0] * 255).round().to(torch.uint8).cpu().numpy()


def oof_histograms(probs_u8: np.ndarray, cache, rows: np.ndarray) -> np.ndarray:
    """(N, 2, 256) Dice histograms of network-size maps brought back to the original size."""
    h0, w0 = cache.orig_size
    return np.stack([dice_histograms(from_net(pr, h0, w0), cache.full_mask(r)) for pr, r in zip(probs_u8, rows)])


def full_res_dice(probs_u8: np.ndarray, cache, rows: np.ndarray, threshold: float) -> float:
    """Mean Dice as Kaggle measures it: maps resized to the original size, thresholded, per image."""
    h0, w0 = cache.orig_size
    return float(np.mean([dice(binarize(np.ascontiguousarray(from_net(pr, h0, w0)), threshold), cache.full_mask(r))
                          for pr, r in zip(probs_u8, rows)]))


def save_oof(path: Path, ids: list[str], probs_u8: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(ids), probs=probs_u8)
    files.write_bytes_atomic(path, buf.getvalue())


def load_oof(path: Path) -> tuple[list[str], np.ndarray]:
    if not path.exists():
        raise PipelineError(f"{path}: no out-of-fold predictions; run 02_train.py for this fold first")
    try:
        with np.load(path, allow_pickle=False) as z:
            return list(z["ids"]), z["probs"]
    except (ValueError, OSError, KeyError) as e:
        raise PipelineError(f"{path}: corrupt out-of-fold file ({e}); re-run 02_train.py for this fold") from None
