"""Is data loading ever the bottleneck? Loader images/s beside training-step images/s, and the cache's gain.

    .venv/bin/python benchmarks/bench_loader.py --input input/demo --output output/demo --preset demo

Needs 01_prepare.py to have run on --input/--output. Measures, at the preset's training size, on this machine:
  1. decoding JPEG + GIF from disk and resizing (what training would do without the cache),
  2. the training loader from the cache, with augmentation, at --workers worker processes,
  3. training steps (forward + backward + optimizer) on in-memory batches.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import params  # noqa: E402
from lib import folds  # noqa: E402
from lib.cache import Cache, open_cache  # noqa: E402
from lib.data import TrainSet, SeededShuffle, make_loader, transform_for  # noqa: E402
from lib.losses import BceDice  # noqa: E402
from lib.model import build_model  # noqa: E402
from lib.runtime import loader_workers  # noqa: E402
from lib.train import make_optimizer  # noqa: E402


def rate(n: int, seconds: float) -> float:
    return n / seconds


def train_step_rate(p, x: torch.Tensor, y: torch.Tensor, memory_format: torch.memory_format, steps: int = 6,
                    bf16: bool = False) -> float:
    """Training images/s of the model as 02_train.py sets it up on a CPU, in ``memory_format`` (float32, or
    ``bf16`` autocast as --amp bf16 runs it)."""
    torch.manual_seed(0)
    model, loss_fn = build_model(p).to(memory_format=memory_format), BceDice()
    opt = make_optimizer(p, model, torch.device("cpu"))
    x = x.contiguous(memory_format=memory_format)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return rate(len(x), float(np.median(times[1:])))


def main() -> None:
    p, _ = params.parse(__doc__)
    split = folds.read(p.output_dir)
    ids = sorted(split.id)
    cache = open_cache(p.input_dir, p.output_dir, ids, p.height, p.width, p.workers, mode="on")
    n = min(64, len(ids))

    # no image arrays: decodes
    decoder = Cache(cache.root, cache.ids, cache.truth, cache.orig_size, cache.size, cache.task)
    start = time.perf_counter()
    for row in range(n):
        decoder.item(row)
    decode = rate(n, time.perf_counter() - start)

    rows = np.arange(len(ids))
    cpu = torch.device("cpu")
    workers = loader_workers(p.workers, cpu, cached=True)  # what 02_train.py uses on this CPU
    transform = transform_for(p)
    loader = make_loader(TrainSet(cache, transform), SeededShuffle(rows, 0), p.batch_size, workers, False,
                         drop_last=True)
    seen, start = 0, None
    for images, _ in loader:  # first batch includes worker start-up; time the rest
        if start is None:
            start = time.perf_counter()
            continue
        seen += len(images)
    loading = rate(seen, time.perf_counter() - start)

    x = torch.from_numpy(np.array(cache.images[:p.batch_size])).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.array(cache.masks[:p.batch_size]))[:, None].float() / 255
    step_rate = {fmt: train_step_rate(p, x, y, fmt) for fmt in (torch.contiguous_format, torch.channels_last)}
    training = step_rate[torch.channels_last if p.channels_last else torch.contiguous_format]

    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"size {p.height}x{p.width}, {p.arch}-{p.encoder}, batch {p.batch_size}, loader workers {workers}, "
          f"channels_last {p.channels_last}\n")
    print("| path | images/s |\n|---|---:|")
    print(f"| decode JPEG + GIF from disk and resize (no cache), 1 process | {decode:.1f} |")
    print(f"| training loader from the cache, augmented, {workers} worker(s) | {loading:.1f} |")
    for fmt, name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC, channels_last")):
        print(f"| training step (forward + backward + AdamW), {torch.get_num_threads()} threads, {name} | "
              f"{step_rate[fmt]:.1f} |")
    print(f"\nloader / training step = {loading / training:.1f}x "
          f"({'data loading is not the bottleneck' if loading > training else 'DATA LOADING IS THE BOTTLENECK'})")
    print(f"cache / no cache = {loading / decode:.1f}x")


if __name__ == "__main__":
    main()
