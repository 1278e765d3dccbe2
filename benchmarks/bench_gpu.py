"""GPU speed of the default recipe (Unet-resnet34 at 1280 x 1920): is the GPU busy, and is it fed?

    python benchmarks/bench_gpu.py --input ../shared/carvana_sample           # all sections
    python benchmarks/bench_gpu.py --input ../shared/carvana_sample --sections eager,loader --batch-sizes 4,8

Prints, on one CUDA GPU, with the pipeline's own model, loss, optimizer and precision settings:
  1. the GPU's measured bf16 matrix-multiply rate (8192^3), the ceiling to compare against;
  2. FLOPs per training image (forward + backward) from torch's FLOP counter;
  3. training images/s and peak memory at each --batch-sizes, eager (with cudnn.benchmark off and on);
  4. torch.compile at --compile-batch-size: compile seconds, images/s, peak memory;
  5. inference images/s with hflip TTA at --predict-batch-size, eager and compiled;
  6. the training loader (JPEG + GIF decode, augmentation, worker processes, pinned memory) at 1..N workers
     on the real images in --input/train, beside the training step rate: can the CPUs feed the GPU?
Training uses random uint8 batches already on the GPU, so sections 3-5 measure the model, not the disk.
--json writes every figure to a file as well.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import params  # noqa: E402
from lib import files, layout, tta  # noqa: E402
from lib.cache import Cache  # noqa: E402
from lib.data import SeededShuffle, TrainSet, make_loader, transform_for  # noqa: E402
from lib.errors import PipelineError, run_main  # noqa: E402
from lib.inputs import image_size  # noqa: E402
from lib.photos import read_image_bytes  # noqa: E402
from lib.losses import BceDice  # noqa: E402
from lib.model import build_model  # noqa: E402
from lib.runtime import Precision  # noqa: E402
from lib.task import BINARY  # noqa: E402
from lib.train import make_optimizer  # noqa: E402


def add_args(parser) -> None:
    parser.add_argument("--steps", type=int, default=15, help="timed steps after warm-up")
    parser.add_argument("--batch-sizes", default="4,8,16", help="training batch sizes to measure (eager)")
    parser.add_argument("--compile-batch-size", type=int, default=8, help="batch size of the torch.compile run")
    parser.add_argument("--sections", default="eager,loader,compile",
                        help="what to measure, in this order: eager, loader, compile (compiling takes minutes)")
    parser.add_argument("--loader-workers", default="1,2,4,8,12,16", help="loader worker counts to measure")
    parser.add_argument("--loader-images", type=int, default=256,
                        help="images per loader measurement (at least 32 batches per worker)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")


def sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 matrix-multiply rate (TFLOP/s) on random data: this GPU's practical ceiling."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start = sync_time()
    for _ in range(reps):
        a @ b
    seconds = sync_time() - start
    del a, b
    return 2 * n ** 3 * reps / seconds / 1e12


class Setup:
    """Model, optimizer and one random batch on the GPU, as 02_train.py sets them up."""

    def __init__(self, p: params.Params, batch: int, compiled: bool):
        self.device = torch.device("cuda")
        torch.manual_seed(0)
        self.p = p
        self.model = build_model(p, pretrained=False).to(self.device).to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.precision, self.loss_fn = Precision.for_device(self.device, "auto"), BceDice()
        self.opt = make_optimizer(p, self.model, self.device)
        self.x = torch.randint(0, 255, (batch, 3, p.height, p.width), dtype=torch.uint8, device=self.device)
        self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = (torch.rand(batch, 1, p.height, p.width, device=self.device) > 0.5).float()

    def train_step(self) -> None:
        self.model.train()
        with self.precision.autocast(self.device):
            logits = self.forward(self.x)
        loss = self.loss_fn(logits, self.y)
        self.precision.scaler.scale(loss).backward()
        self.precision.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.p.grad_clip)
        self.precision.scaler.step(self.opt)
        self.precision.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def predict(self, batch: int) -> None:
        self.model.eval()
        with self.precision.autocast(self.device):
            tta.predict_proba(self.forward, self.x[:batch], "hflip", BINARY)


def timed(fn, steps: int, warmup: int = 3) -> tuple[float, float]:
    """(warm-up seconds, seconds per step after it)."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    warm = sync_time() - start
    start = sync_time()
    for _ in range(steps):
        fn()
    return warm, (sync_time() - start) / steps


def flops_per_image(p: params.Params) -> float:
    """Forward + backward FLOPs of one training image (torch.utils.flop_counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode
    s = Setup(p, 1, compiled=False)
    with FlopCounterMode(display=False) as counter:
        with s.precision.autocast(s.device):
            logits = s.model(s.x)
        s.loss_fn(logits, s.y).backward()
    return float(counter.get_total_flops())


def train_rate(p: params.Params, batch: int, compiled: bool, steps: int, predict_batch: int = 0) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        s = Setup(p, batch, compiled)
        warm, per_step = timed(s.train_step, steps)
        out = {"batch": batch, "compiled": compiled, "warmup_s": warm, "train_images_per_s": batch / per_step,
               "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        if predict_batch:
            pwarm, per_predict = timed(lambda: s.predict(predict_batch), steps)
            out |= {"predict_warmup_s": pwarm, "predict_images_per_s": predict_batch / per_predict}
        return out
    except torch.OutOfMemoryError:
        return {"batch": batch, "compiled": compiled, "oom": True}
    finally:
        s = None  # noqa: F841 -- free the model and batch before the next measurement
        torch.cuda.empty_cache()


def loader_rates(p: params.Params, workers_list: list[int], n_images: int) -> list[dict]:
    """Training loader images/s (decode + augment in workers; pinned and copied to the GPU where there is one), per
    worker count, on the real images in ``p.input/train`` (also used by bench_scale.py on a CPU)."""
    gpu = torch.cuda.is_available()
    folder = p.input_dir / files.TRAIN
    jpgs = layout.files_in(folder, layout.IMAGE_EXTS[:1])  # Carvana's .jpg
    if not jpgs:
        raise PipelineError(f"{folder}: no *.jpg training images for the loader measurement; give --input")
    ids, first = [f.stem for f in jpgs], jpgs[0]
    orig = image_size(read_image_bytes(first), first)
    data = Cache(p.input_dir, ids, np.zeros((len(ids), 0), np.uint8), orig, (p.height, p.width), BINARY)
    transform = transform_for(p)
    out = []
    for workers in workers_list:
        # the workers run ahead by prefetch_factor (4) batches each before the clock starts: measure 8 times that
        n = max(n_images, 8 * 4 * workers * p.batch_size)
        rows = np.resize(np.arange(len(ids)), n + p.batch_size)  # repeat the images if there are few
        loader = make_loader(TrainSet(data, transform), SeededShuffle(rows, 0), p.batch_size, workers, gpu,
                             drop_last=True)
        seen, start = 0, None
        for images, masks in loader:
            if gpu:
                images.cuda(non_blocking=True), masks.cuda(non_blocking=True)
            if start is None:  # the first batch includes the workers' start-up
                start = time.perf_counter()
                continue
            seen += len(images)
        rate = seen / (time.perf_counter() - start)
        out.append({"workers": workers, "images_per_s": rate, "per_worker": rate / max(workers, 1)})
        print(f"| loader, {workers} worker(s) | {rate:.1f} images/s ({rate / max(workers, 1):.1f} per worker) |",
              flush=True)
        del loader
    return out


def main(p: params.Params, args) -> None:
    if not torch.cuda.is_available():
        raise PipelineError("no CUDA GPU visible: this benchmark measures GPU speed")
    dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "model": f"{p.arch}-{p.encoder}", "size": [p.height, p.width], "amp": dtype}
    print(f"{report['gpu']}, torch {torch.__version__}, {os.cpu_count()} CPUs; {p.arch}-{p.encoder} at "
          f"{p.height}x{p.width}, AMP {dtype}, channels_last, fused AdamW, grad clip {p.grad_clip}\n", flush=True)
    report["matmul_tflops"] = matmul_tflops()
    report["flops_per_image"] = flops_per_image(p)
    print(f"bf16 matmul 8192^3: {report['matmul_tflops']:.0f} TFLOP/s measured; training FLOPs per image "
          f"(forward + backward): {report['flops_per_image'] / 1e12:.2f} TFLOP -> ceiling "
          f"{report['matmul_tflops'] * 1e12 / report['flops_per_image']:.0f} images/s\n", flush=True)

    print("| model | cudnn.benchmark | batch | train images/s | % of matmul rate | peak GiB | warm-up s |")
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    runs = []

    def save() -> None:  # after every figure, so a run stopped by a time limit keeps what it measured
        if args.json:
            args.json.write_text(json.dumps(report | {"training": runs}, indent=2))

    def show(r: dict, bench: bool) -> None:
        r["cudnn_benchmark"] = bench
        runs.append(r)
        save()
        name = "torch.compile" if r["compiled"] else "eager"
        if r.get("oom"):
            print(f"| {name} | {bench} | {r['batch']} | out of memory | | | |", flush=True)
            return
        util = r["train_images_per_s"] * report["flops_per_image"] / (report["matmul_tflops"] * 1e12)
        r["utilisation"] = util
        print(f"| {name} | {bench} | {r['batch']} | {r['train_images_per_s']:.1f} | {util:.0%} | "
              f"{r['peak_gib']:.1f} | {r['warmup_s']:.1f} |", flush=True)

    sections = args.sections.split(",")
    if "eager" in sections:
        batches = [int(b) for b in args.batch_sizes.split(",")]
        torch.backends.cudnn.benchmark = False
        show(train_rate(p, batches[0], False, args.steps, p.predict_batch_size), False)
        torch.backends.cudnn.benchmark = True
        for b in batches:
            show(train_rate(p, b, False, args.steps, p.predict_batch_size if b == batches[0] else 0), True)
    if "loader" in sections:
        print(f"\n| training loader at {p.height}x{p.width}, batch {p.batch_size}, augmented, pinned | images/s |\n"
              "|---|---:|", flush=True)
        report["loader"] = loader_rates(p, [int(w) for w in args.loader_workers.split(",")], args.loader_images)
        save()
    if "compile" in sections:
        torch.backends.cudnn.benchmark = True
        show(train_rate(p, args.compile_batch_size, True, args.steps, p.predict_batch_size), True)
    print(f"\n| inference, hflip TTA, batch {p.predict_batch_size} | cudnn.benchmark | images/s | warm-up s |\n"
          "|---|---|---:|---:|")
    for r in runs:
        if "predict_images_per_s" in r:
            print(f"| {'torch.compile' if r['compiled'] else 'eager'} | {r['cudnn_benchmark']} | "
                  f"{r['predict_images_per_s']:.1f} | {r['predict_warmup_s']:.1f} |", flush=True)
    fed = [r for r in runs if not r.get("oom")]
    if fed and report.get("loader"):
        best = max(fed, key=lambda r: r["train_images_per_s"])
        need = best["train_images_per_s"]
        enough = [r["workers"] for r in report["loader"] if r["images_per_s"] >= need]
        print(f"\nfastest training: {need:.1f} images/s ({'compiled' if best['compiled'] else 'eager'}, batch "
              f"{best['batch']}); the loader keeps up from {min(enough) if enough else 'more than the measured'} "
              "worker(s)")


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args)
    run_main(lambda: main(p, args))
