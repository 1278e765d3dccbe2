"""GPU training and inference speed at full resolution: AMP + channels_last, with and without torch.compile.

    .venv/bin/python benchmarks/bench_gpu.py                   # defaults: Unet-resnet34 at 1280x1920, batch 4
    .venv/bin/python benchmarks/bench_gpu.py --encoder resnet18 --batch-size 8 --steps 30

Prints training images/s (forward + backward + AdamW with the pipeline's loss and precision
settings), inference images/s with hflip TTA, and peak GPU memory, for eager and compiled models.
Uses random uint8 batches already on the GPU, so it measures the model, not the disk.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import params  # noqa: E402
from lib import tta  # noqa: E402
from lib.errors import PipelineError, run_main  # noqa: E402
from lib.losses import BceDice  # noqa: E402
from lib.model import build_model  # noqa: E402
from lib.train import Precision  # noqa: E402


def add_args(parser) -> None:
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")


def measure(p: params.Params, compile_model: bool, steps: int) -> dict:
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats()
    model = build_model(p, pretrained=False).to(device).to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_model else model
    precision, loss_fn = Precision.for_device(device, amp=True), BceDice()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 255, (p.batch_size, 3, p.height, p.width), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(p.batch_size, 1, p.height, p.width, device=device) > 0.5).float()

    def step() -> None:
        with precision.autocast(device):
            logits = forward(x)
        loss = loss_fn(logits, y)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(opt)
        precision.scaler.update()
        opt.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    train = steps * p.batch_size / (time.perf_counter() - start)
    model.eval()
    with torch.no_grad(), precision.autocast(device):
        tta.predict_proba(forward, x, "hflip")
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            tta.predict_proba(forward, x, "hflip")
        torch.cuda.synchronize()
    infer = steps * p.batch_size / (time.perf_counter() - start)
    return {"train": train, "infer": infer, "warmup_s": warmup, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main(p: params.Params, steps: int) -> None:
    if not torch.cuda.is_available():
        raise PipelineError("no CUDA GPU visible: this benchmark measures GPU speed")
    dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {p.arch}-{p.encoder} at "
          f"{p.height}x{p.width}, batch {p.batch_size}, AMP {dtype}, channels_last\n")
    print("| model | train images/s | predict images/s (hflip TTA) | warm-up s | peak GPU memory GiB |")
    print("|---|---:|---:|---:|---:|")
    for compiled in (False, True):
        r = measure(p, compiled, steps)
        print(f"| {'torch.compile' if compiled else 'eager'} | {r['train']:.1f} | {r['infer']:.1f} | "
              f"{r['warmup_s']:.0f} | {r['peak_gib']:.1f} |", flush=True)


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args)
    run_main(lambda: main(p, args.steps))
