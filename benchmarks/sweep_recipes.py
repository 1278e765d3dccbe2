"""Several recipes' car-grouped cross-validation side by side, each in its own folder: for a machine with many cores
or a GPU, where one recipe's folds leave most of it idle (a GPU lease: benchmarks/gpu_session.sh, STEPS=recipes).

    .venv/bin/python benchmarks/sweep_recipes.py --out out/sweep "" "--epochs 42" "--epochs 42 --seed 1"
    .venv/bin/python benchmarks/sweep_recipes.py --out out/s --common "--device cuda --jobs 4" --deadline 400 "" "--lr 3e-3"

Each recipe is one string of flags added to ``--preset cpu --input <sample>`` and ``--common`` ("" is the preset as
it is). All recipes start at once (--parallel caps that): 01 -> 02 --fold all -> 03, as bench_recipe.py runs them,
without 04. 01 gets the preset and --common alone, so every recipe has the same split and a recipe's --seed changes
training alone. As each finishes it prints one line: seconds, out-of-fold Dice with the tuned TTA, post-processing and
threshold, per fold, and the worst car. Past --deadline the recipes still running are stopped, and their lines say
how far each fold's log.csv got. The same recipe with another --seed measures how much of a difference is noise.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402

from bench_recipe import STAGES, per_car  # noqa: E402
from lib import files  # noqa: E402
import params  # noqa: E402


def fold_progress(flags: list[str]) -> str:
    """How far each fold's log.csv got: 'fold K: epoch E val D' (the last validated epoch)."""
    p, _ = params.parse("bench", flags)
    out = []
    for fold in sorted(files.run_dir(p.output_dir, p.experiment).glob("fold*")):
        rows = pd.read_csv(fold / "log.csv") if (fold / "log.csv").exists() else pd.DataFrame(columns=["val_dice"])
        rows = rows.dropna(subset=["val_dice"])
        last = f"epoch {rows.epoch.iloc[-1]} val {rows.val_dice.iloc[-1]:.5f}" if len(rows) else "no validation yet"
        out.append(f"{fold.name}: {last}")
    return "; ".join(out) or "no fold started"


def run_recipe(name: str, base: list[str], recipe: list[str], folder: Path, deadline: float) -> str:
    """01 (``base`` flags) -> 02 --fold all -> 03 (``base`` + ``recipe``) into ``folder``; one result line (or where
    it stopped and why)."""
    start = time.perf_counter()
    flags = base + recipe
    with open(folder / "log.txt", "w") as log:
        for script, extra in STAGES[:3]:
            cmd = [sys.executable, script, *extra.split(), *(base if script == "01_prepare.py" else flags)]
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            try:
                code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=max(1.0, deadline - time.monotonic())).returncode
            except subprocess.TimeoutExpired:
                return f"{name}: stopped at the deadline in {script} ({fold_progress(flags)})"
            if code:
                return f"{name}: {script} failed (exit {code}); its output is in {folder / 'log.txt'}"
    cars, tuning = per_car(flags)
    p, _ = params.parse("bench", flags)
    run = files.run_dir(p.output_dir, p.experiment)
    folds = []
    for log in sorted(run.glob("fold*/log.csv")):
        folds.append(f"{pd.read_csv(log).val_dice.dropna().iloc[-1]:.5f}")
    return (f"{name}: {time.perf_counter() - start:.0f} s, out-of-fold {tuning['oof_dice']:.5f} (TTA {tuning['tta']}, "
            f"{tuning.get('postprocess', 'none')}, threshold {tuning['threshold']:.3f}); folds (last val, no TTA) "
            f"{' / '.join(folds)}; per car mean {cars.mean():.5f}, worst {cars.index[0]} {cars.iloc[0]:.4f}, "
            f"{cars.index[1]} {cars.iloc[1]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new folder; recipe I runs in OUT/rI")
    parser.add_argument("--input", default=str(ROOT.parent / "shared" / "carvana_sample"))
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--common", default="", help="flags for every recipe, e.g. '--device cuda --jobs 4'")
    parser.add_argument("--parallel", type=int, default=0, help="recipes at a time (0: all)")
    parser.add_argument("--deadline", type=float, default=0, help="seconds from now after which running recipes stop")
    parser.add_argument("recipes", nargs="+", help="one string of flags per recipe ('' = the preset as it is)")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out}: exists; give a new folder")
    deadline = time.monotonic() + (args.deadline or 1e9)
    jobs = []
    for i, recipe in enumerate(args.recipes, 1):
        folder = (args.out / f"r{i}").resolve()
        folder.mkdir(parents=True)
        base = ["--preset", args.preset, "--input", args.input, "--output", str(folder / "output"),
                *shlex.split(args.common)]
        jobs.append((f"r{i} [{recipe or 'preset'}]", base, shlex.split(recipe), folder))
    print(f"{len(jobs)} recipes, --preset {args.preset} {args.common}", flush=True)
    with ThreadPoolExecutor(args.parallel or len(jobs)) as pool:
        futures = [pool.submit(run_recipe, *job, deadline) for job in jobs]
        for future in as_completed(futures):
            print(future.result(), flush=True)
    lines = [future.result() for future in futures]
    print("\n" + "\n".join(lines))
    (args.out / "results.json").write_text(json.dumps(lines, indent=1))


if __name__ == "__main__":
    main()
