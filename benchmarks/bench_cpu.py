"""What the CPU recipe's speed settings buy: bf16 autocast against float32, and folds side by side (--jobs 2)
against one after the other (--jobs 1), on this machine, in one run.

    .venv/bin/python benchmarks/bench_cpu.py --preset cpu --input ../shared/carvana_sample --output output/sample

Needs 01_prepare.py to have run on --input/--output (it trains two throw-away experiments there, bench_jobs1 and
bench_jobs2, and deletes them). Prints:
  1. training-step images/s of the preset's network on random data, one process with every thread: float32 and
     bf16 autocast (AMX or AVX512-BF16 on CPUs that have it);
  2. whole ``02_train.py --fold all --epochs E`` runs (E = --bench-epochs, default 2): wall time and training
     images/s with --jobs 1 and with --jobs 2, each with the preset's other settings (--amp auto).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import params  # noqa: E402
from bench_loader import train_step_rate  # noqa: E402
from lib import files, folds  # noqa: E402
from lib.runtime import cpu_has_bf16  # noqa: E402


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bench-epochs", type=int, default=2, help="epochs of each timed 02 run")
    p, args = params.parse(__doc__, sys.argv[1:], extra=extra)
    flags = [a for a in sys.argv[1:] if not a.startswith("--bench-epochs") and a != str(args.bench_epochs)]
    torch.manual_seed(0)
    x = torch.randint(0, 256, (p.batch_size, 3, p.crop_height or p.height, p.crop_width or p.width),
                      dtype=torch.uint8).float()
    y = (torch.rand(p.batch_size, 1, *x.shape[2:]) > 0.5).float()
    steps = {name: train_step_rate(p, x, y, torch.channels_last, 8, bf16=name == "bf16") for name in ("fp32", "bf16")}

    split = folds.read(p.output_dir)
    n_train = sum(int((split.fold != k).sum()) for k in range(folds.n_folds_of(split)))
    runs = {}
    for jobs in (1, 2):
        name = f"bench_jobs{jobs}"
        shutil.rmtree(files.run_dir(p.output_dir, name), ignore_errors=True)
        cmd = [sys.executable, "02_train.py", *flags, "--fold", "all", "--experiment", name, "--jobs", str(jobs),
               "--epochs", str(args.bench_epochs), "--val-every", str(args.bench_epochs)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        runs[jobs] = time.perf_counter() - start
        shutil.rmtree(files.run_dir(p.output_dir, name), ignore_errors=True)
        if proc.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    print(f"machine: {os.cpu_count()} CPU cores, bf16 hardware {cpu_has_bf16()}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"network: {p.arch}-{p.encoder} at {x.shape[2]}x{x.shape[3]} (training input), batch {p.batch_size}\n")
    print("| what | figure |\n|---|---:|")
    print(f"| training step, float32, {torch.get_num_threads()} threads, images/s | {steps['fp32']:.1f} |")
    print(f"| training step, bf16 autocast, {torch.get_num_threads()} threads, images/s | {steps['bf16']:.1f} |")
    print(f"| bf16 / float32 | {steps['bf16'] / steps['fp32']:.2f}x |")
    seen = n_train * args.bench_epochs
    for jobs, seconds in runs.items():
        print(f"| 02 --fold all, {args.bench_epochs} epochs, --jobs {jobs}: wall s (training images/s) | "
              f"{seconds:.1f} ({seen / seconds:.1f}) |")
    print(f"| --jobs 2 / --jobs 1 | {runs[1] / runs[2]:.2f}x |")


if __name__ == "__main__":
    main()
