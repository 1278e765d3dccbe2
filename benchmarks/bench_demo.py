"""How long the README's demo takes here, beside how fast this machine was while it ran.

    .venv/bin/python benchmarks/bench_demo.py                 # the four stages of `make demo`, in a temp folder
    .venv/bin/python benchmarks/bench_demo.py --keep out/bd   # ... into out/bd/input and out/bd/output

Runs 01 -> 02 -> 03 -> 04 with the same flags as `make demo` (fresh demo data, fresh output) and prints
each stage's wall time. The same work can take up to twice as long from one hour to the next on a
shared machine, so a demo time alone says little: the benchmark also times a fixed reference load (training
steps of the demo's network on random data, the work 02 spends most of its time on) right before and right
after the demo: compare demo times taken at similar reference speeds.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import params  # noqa: E402
from bench_loader import train_step_rate  # noqa: E402  (the training step as 02_train.py sets it up)

KEY_LINES = re.compile(r"demo data:|checked|average mask|best val Dice|^tuning:|test maps:|^wrote .*submission|submission\.csv\.gz \|")
STAGES = (  # what `make demo` runs (Makefile), minus the fixed --preset/--input/--output
    ("01_prepare.py", "--demo"),
    ("02_train.py", "--fold all --resume"),
    ("03_predict.py", ""),
    ("04_submit.py", "--baselines --score"),
)


def reference_speed(steps: int = 12) -> float:
    """Training images/s of the demo network (batch, size and memory format of the demo preset), random data."""
    p = params.make_params(**params.PRESETS["demo"])
    torch.manual_seed(0)
    x = torch.randint(0, 256, (p.batch_size, 3, p.height, p.width), dtype=torch.uint8)
    y = (torch.rand(p.batch_size, 1, p.height, p.width) > 0.5).float()
    return train_step_rate(p, x, y, torch.channels_last, steps)


def run_stages(folder: Path, stages=STAGES, flags: str | None = None) -> list[tuple[str, float, str]]:
    """Run ``stages`` ((script, its own flags)) one after another with ``flags`` (default: the demo's into
    ``folder``); exits naming the stage that failed. Returns (script, wall seconds, stdout) per stage."""
    flags = flags or f"--preset demo --input {folder / 'input'} --output {folder / 'output'}"
    out = []
    for script, extra in stages:
        cmd = [sys.executable, *script.split(), *extra.split(), *flags.split()]  # script may be "-m torch... x.py"
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        out.append((script, seconds, proc.stdout))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it; default: a temp folder")
    args = parser.parse_args()
    before = reference_speed()
    if args.keep:
        if args.keep.exists():
            sys.exit(f"{args.keep}: exists; give a new folder")
        stages = run_stages(args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
            stages = run_stages(Path(tmp))
    after = reference_speed()
    total = sum(s for _, s, _ in stages)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"reference load (demo network training steps, random data): {before:.1f} images/s before, "
          f"{after:.1f} after\n")
    print("| stage | seconds |\n|---|---:|")
    for script, seconds, _ in stages:
        print(f"| {script} | {seconds:.1f} |")
    print(f"| **total** | **{total:.1f}** ({total / 60:.2f} min) |")
    print("\nwhat the stages printed (key lines):")
    for script, _, stdout in stages:
        for line in stdout.splitlines():
            if KEY_LINES.search(line):
                print(f"  {script}: {line.strip()}")


if __name__ == "__main__":
    main()
