"""Which encoders train slowly from scratch on this CPU: training-step images/s of the Unet with each encoder, at the
preset's size and batch, as 02_train.py runs it on a CPU (channels_last, --amp auto: bf16 where the CPU has it).

    .venv/bin/python benchmarks/bench_encoders.py --preset cpu
    .venv/bin/python benchmarks/bench_encoders.py --preset cpu --amp off --encoders resnet18,efficientnet-b0

Random images and masks (no data needed), each encoder built without weights; ``--rounds`` steps each (the first
left out, the median step timed), one encoder after another as training runs them. ``--in-turns`` runs one step of
each in turn instead, so that a change in the machine's load falls on all alike, but it costs the encoders with many
distinct kernels (depthwise ones in bf16) a re-warm at each turn: efficientnet-b0 measured 6x slower that way.
Prints one markdown row per encoder (images/s, ratio to the first encoder's).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import params  # noqa: E402
from lib.losses import BceDice  # noqa: E402
from lib.model import build_model  # noqa: E402
from lib.runtime import Precision, set_threads  # noqa: E402
from lib.train import make_optimizer  # noqa: E402

ENCODERS = "resnet18,resnet34,mobilenet_v2,efficientnet-b0,tu-regnety_002,resnet50,efficientnet-b4,tu-convnext_tiny"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoders", default=ENCODERS, help=f"comma-separated (default {ENCODERS})")
    parser.add_argument("--rounds", type=int, default=4, help="training steps per encoder (the first left out)")
    parser.add_argument("--in-turns", action="store_true",
                        help="one step of each encoder in turn, --rounds times (load changes fall on all alike)")


def main() -> None:
    p, args = params.parse(__doc__, extra=add_args)
    set_threads(p.threads)
    prec = Precision.for_device(torch.device("cpu"), p.amp)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (p.batch_size, 3, p.height, p.width), dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(p.batch_size, 1, p.height, p.width) > 0.5).float()
    names = args.encoders.split(",")
    nets = {}
    for name in names:
        q = dataclasses.replace(p, encoder=name, encoder_weights="none")
        model = build_model(q).to(memory_format=torch.channels_last)
        nets[name] = (model, make_optimizer(q, model, torch.device("cpu")))
    loss_fn = BceDice()
    times: dict[str, list[float]] = {name: [] for name in names}
    order = ([name for _ in range(args.rounds) for name in names] if args.in_turns
             else [name for name in names for _ in range(args.rounds)])
    for name in order:
        model, opt = nets[name]
        t = time.perf_counter()
        with prec.autocast(torch.device("cpu")):
            logits = model(x)
        loss_fn(logits.float(), y).backward()
        opt.step()
        opt.zero_grad()
        times[name].append(time.perf_counter() - t)
    print(f"{p.height} x {p.width}, batch {p.batch_size}, {torch.get_num_threads()} threads, {prec.name}, "
          f"channels_last, from scratch, {args.rounds - 1} steps each "
          f"{'in turns' if args.in_turns else 'one encoder after another'}")
    print("| encoder | training images/s | ratio to the first |\n|---|---:|---:|")
    rates = {name: p.batch_size / float(np.median(ts[1:])) for name, ts in times.items()}
    for name in names:
        print(f"| {name} | {rates[name]:.1f} | {rates[name] / rates[names[0]]:.2f} |")


if __name__ == "__main__":
    main()
