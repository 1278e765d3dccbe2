"""A CPU recipe end to end on the real sample: the four stages' wall times, the machine's speed in the same run,
and the car-grouped out-of-fold Dice with its worst car.

    .venv/bin/python benchmarks/bench_recipe.py                                   # --preset cpu, temp folder
    .venv/bin/python benchmarks/bench_recipe.py --keep out/r1 -- --epochs 16      # other settings after --
    .venv/bin/python benchmarks/bench_recipe.py --full --test 572  # the README's 20-minute run (the preset's 29 epochs)
    .venv/bin/python benchmarks/bench_recipe.py --holdout 0 --keep out/h0   # that run scored on fold 0's cars
    .venv/bin/python benchmarks/bench_recipe.py --holdout 0,2 -- --epochs 16   # one run per kept-out fold, and the mean

Runs 01 -> 02 --fold all -> 03 -> 04 --baselines with ``--preset cpu --input ../shared/carvana_sample`` (or
--input) plus the flags after ``--``, into a fresh output folder. The sample has no test/ folder, so 03 tunes TTA
and threshold on the out-of-fold maps and 04 writes the comparison table: what the recipe would submit is scored on
cars its models never saw. As bench_demo.py does, it times a fixed reference load (the demo network's training
steps on random data) right before and right after, since this kind of machine runs the same work up to 2x slower
from one hour to the next. Prints one row for benchmarks/results/recipes.md.

--holdout G scores the submission run itself on cars it never saw: 01 splits the whole sample into a scratch folder
(the preset's --n-folds and --seed, as the cross-validation's split), then the cars of fold G are kept out: an input
folder of links (benchmarks/holdout.py) holds the other cars in train/ and train_masks/ and G's photos in test/ with
a sample_submission.csv of their ids, the submission run (01, 02 --fold full, 03, 04 --baselines) runs on it, and
the submission 04 wrote is scored against G's true masks at full resolution: Dice per image, its mean, each car's
mean (the worst car) and the images' 5th percentile. Nothing is tuned on G's cars: 03 has only the full model, so it
predicts with the preset's TTA, threshold 0.5 and post-processing. --holdout 0,2: a run per fold, each in its own
folder, and the mean over them; the per-image figures go to holdout.json in the work folder (keep it with --keep).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import holdout  # noqa: E402
from bench_demo import reference_speed, run_stages  # noqa: E402
from lib import files, folds as folds_mod, submission  # noqa: E402
from lib.cache import open_for, pair_paths  # noqa: E402
from lib.errors import run_main  # noqa: E402
from lib.oof import image_dices, load_oof  # noqa: E402
from lib.task import Task  # noqa: E402
import params  # noqa: E402

STAGES = (("01_prepare.py", ""), ("02_train.py", "--fold all"), ("03_predict.py", ""),
          ("04_submit.py", "--baselines"))
# the README's 20-minute run: one model on every training image
FINAL_STAGES = (("01_prepare.py", ""), ("02_train.py", "--fold full"), ("03_predict.py", ""),
                ("04_submit.py", "--baselines"))


def per_car(flags: list[str]) -> tuple[pd.Series, dict]:
    """Mean full-resolution Dice per car of the out-of-fold maps that training kept (no TTA) at the tuned
    threshold and post-processing, and the tuning record (its oof_dice is with the chosen TTA)."""
    p, _ = params.parse("bench", flags)
    tuning = json.loads((files.run_dir(p.output_dir, p.experiment) / "tuning.json").read_text())
    split = folds_mod.read(p.output_dir)
    cache = open_for(p, list(split.id))
    rows = []
    for k in sorted(split.fold.unique()):
        oof = load_oof(files.fold_dir(p.output_dir, p.experiment, k) / files.OOF)
        dices = image_dices(oof.probs, cache, cache.rows(oof.ids), tuning["threshold"], cache.task,
                            post=tuning.get("postprocess", "none"))
        rows += list(zip(oof.ids, dices))
    table = pd.DataFrame(rows, columns=["id", "dice"]).merge(split[["id", "car"]], on="id")
    return table.groupby("car").dice.mean().sort_values(), tuning


def with_test_folder(sample: Path, root: Path, n: int) -> Path:
    """``root``: the sample's train/ and train_masks/ (links to the folders) plus test/ holding ``n`` links to its
    photos under the first ``n`` ids of its sample_submission.csv, which is cut to them."""
    listed = sample / "sample_submission.csv"
    if not listed.exists():
        sys.exit(f"--test {n}: {listed} is missing; it names the test ids (give an --input that has one)")
    header, *rows = listed.read_text().splitlines()
    photos = sorted((sample / "train").glob("*.jpg"))
    if n > len(rows):
        sys.exit(f"--test {n}: {listed} lists {len(rows)} ids; give --test {len(rows)} or fewer")
    root.mkdir(parents=True)
    for name in ("train", "train_masks"):
        (root / name).symlink_to(sample.resolve() / name, target_is_directory=True)
    (root / "test").mkdir()
    for j, row in enumerate(rows[:n]):
        (root / "test" / row.split(",")[0]).symlink_to(photos[j % len(photos)].resolve())
    (root / "sample_submission.csv").write_text("\n".join([header, *rows[:n]]) + "\n")
    return root


def sample_split(folder: Path, sample: Path, preset: str, extra: list[str]) -> tuple[pd.DataFrame, float]:
    """The car-grouped split 01_prepare.py makes of the whole sample with these settings (its folds.csv, written into
    ``folder``), and the seconds 01 took."""
    flags = ["--preset", preset, "--input", str(sample), "--output", str(folder), *extra]
    (_, seconds, _), = run_stages(folder, (("01_prepare.py", ""),), " ".join(flags))
    return folds_mod.read(folder), seconds


def holdout_run(folder: Path, sample: Path, split: pd.DataFrame, group: int, preset: str, extra: list[str]) -> dict:
    """The submission run (FINAL_STAGES) on an input of links that keeps fold ``group``'s cars out of training and
    predicts them as its test set, in ``folder``; its stage seconds and the scores of its submission."""
    p, _ = params.parse("bench", ["--preset", preset, "--input", str(sample), *extra])
    kept_out = holdout.build_input(sample, split, group, folder / "input", p.mask_suffix, Task.of(p))
    flags = ["--preset", preset, "--input", str(folder / "input"), "--output", str(folder / "output"), *extra]
    stages = run_stages(folder, FINAL_STAGES, " ".join(flags))
    q, _ = params.parse("bench", flags)
    path = submission.submission_path(files.run_dir(q.output_dir, q.experiment), q.submission)
    truths = {i: mask for i, (_, mask) in zip(kept_out, pair_paths(sample, kept_out, p.mask_suffix, Task.of(p)))}
    dices = holdout.score(path, truths, q.rle_order, Task.of(q))
    cars = split[split.fold == group].car.nunique()
    return {"group": group, "n_cars": int(cars), "n_images": len(kept_out), "submission": str(path),
            "stages": stages, "stage_seconds": {script: round(s, 1) for script, s, _ in stages},
            **holdout.summarize(dices, split)}


def print_machine(before: float, after: float) -> None:
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    print(f"reference load (demo network training steps, random data): {before:.1f} images/s before, "
          f"{after:.1f} after")


def print_times(stages: list[tuple[str, float, str]]) -> float:
    """The stage table; returns the total seconds."""
    total = sum(s for _, s, _ in stages)
    print("| stage | seconds |\n|---|---:|")
    for script, seconds, _ in stages:
        print(f"| {script} | {seconds:.1f} |")
    print(f"| **total** | **{total:.1f}** ({total / 60:.2f} min) |\n")
    return total


def held_out_line(run: dict) -> str:
    return (f"held-out cars (group {run['group']}, {run['n_cars']} cars, {run['n_images']} photos): Dice mean "
            f"{run['mean']:.5f} (worst car {run['worst_car']} {run['worst_car_dice']:.5f}, 5th percentile "
            f"{run['p5']:.5f})")


def main_holdout(args: argparse.Namespace, extra: list[str]) -> None:
    """--holdout: the split of the whole sample, then a submission run per kept-out fold, scored on its cars."""
    if args.full or args.test:
        sys.exit("--holdout runs the submission run itself with the kept-out cars as its test set; drop --full and "
                 "--test")
    sample = Path(args.input).resolve()
    p, _ = params.parse("bench", ["--preset", args.preset, "--input", str(sample), *extra])
    if not Task.of(p).binary:
        sys.exit(f"--holdout {args.holdout}: scores binary masks (img,rle_mask rows); this task is "
                 f"{Task.of(p).describe()}")
    try:
        groups = holdout.parse_groups(args.holdout, p.n_folds)
    except ValueError as e:
        sys.exit(str(e))
    if args.keep and args.keep.exists():
        sys.exit(f"{args.keep.resolve()}: exists; give a new folder")
    before = reference_speed()
    with tempfile.TemporaryDirectory(prefix="bench_recipe_") as tmp:
        folder = (args.keep or Path(tmp)).resolve()
        split, split_seconds = sample_split(folder / "split", sample, args.preset, extra)
        runs = [holdout_run(folder / f"group{g}", sample, split, g, args.preset, extra) for g in groups]
        after = reference_speed()
        files.write_json(folder / "holdout.json", {
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]), "preset": args.preset, "flags": extra,
            "input": str(sample), "n_folds": p.n_folds, "seed": p.seed, "split_seconds": round(split_seconds, 1),
            "reference_images_per_s": {"before": round(before, 1), "after": round(after, 1)},
            "mean": sum(r["mean"] for r in runs) / len(runs),
            "groups": [{k: v for k, v in r.items() if k != "stages"} for r in runs]})
    print_machine(before, after)
    print(f"split: 01_prepare.py on the whole sample ({split.car.nunique()} cars, {p.n_folds} folds, seed {p.seed}) "
          f"in {split_seconds:.1f} s, not counted below\n")
    report_holdout(runs, args, extra, before, after)
    print(f"per-image and per-car figures: {folder / 'holdout.json'}"
          + ("" if args.keep else " (in a temp folder, now removed: give --keep DIR to keep it)"))


def report_holdout(runs: list[dict], args: argparse.Namespace, extra: list[str], before: float, after: float) -> None:
    """Each run's stage table and held-out Dice, their mean (several groups), and the row for recipes.md."""
    for run in runs:
        print(f"group {run['group']} kept out: {', '.join(sorted(run['cars']))}")
        print_times(run["stages"])
        print(f"held-out cars (group {run['group']}, {run['n_cars']} cars, {run['n_images']} photos): Dice mean "
              f"{run['mean']:.5f} (worst car {run['worst_car']} {run['worst_car_dice']:.5f}, 5th percentile "
              f"{run['p5']:.5f})")
        print("  per car: " + ", ".join(f"{c} {d:.4f}" for c, d in run["cars"].items()) + "\n")
    mean = sum(r["mean"] for r in runs) / len(runs)
    worst = min(runs, key=lambda r: r["worst_car_dice"])
    if len(runs) > 1:
        print(f"held-out cars, mean over groups {args.holdout} ({sum(r['n_cars'] for r in runs)} cars, "
              f"{sum(r['n_images'] for r in runs)} photos): Dice mean {mean:.5f} (worst car {worst['worst_car']} "
              f"{worst['worst_car_dice']:.5f}, group {worst['group']})\n")
    minutes = sum(sum(r["stage_seconds"].values()) for r in runs) / len(runs) / 60
    print(f"row: | {args.preset} {' '.join(extra)} --holdout {args.holdout} | {minutes:.1f} | held out: {mean:.5f} | "
          f"{worst['worst_car']} {worst['worst_car_dice']:.4f} | {before:.1f} / {after:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it; default: a temp folder")
    parser.add_argument("--input", default=str(ROOT.parent / "shared" / "carvana_sample"))
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--full", action="store_true",
                        help="the submission run instead of the cross-validation: 02 --fold full (one model on every "
                             "training image); it has no out-of-fold maps, so only the times are printed")
    parser.add_argument("--test", type=int, default=0, metavar="N",
                        help="add a test/ folder of N images (the sample's photos under test ids) to time 03's test "
                             "maps and 04's submission too")
    parser.add_argument("--holdout", metavar="G[,G...]",
                        help="the submission run with fold G's cars of the sample's split kept out as its test set, "
                             "scored on their true masks; a comma list: a run per fold and the mean")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="settings after --, e.g. -- --epochs 16")
    args = parser.parse_args()
    extra = [f for f in args.flags if f != "--"]
    if args.holdout is not None:
        return main_holdout(args, extra)
    before = reference_speed()
    with tempfile.TemporaryDirectory(prefix="bench_recipe_") as tmp:
        folder = (args.keep or Path(tmp)).resolve()
        if args.keep and folder.exists():
            sys.exit(f"{folder}: exists; give a new folder")
        data = with_test_folder(Path(args.input), folder / "input", args.test) if args.test else args.input
        flags = ["--preset", args.preset, "--input", str(data), "--output", str(folder / "output"), *extra]
        stages = run_stages(folder, FINAL_STAGES if args.full else STAGES, " ".join(flags))
        after = reference_speed()
        cars, tuning = (None, None) if args.full else per_car(flags)
    print_machine(before, after)
    print()
    total = print_times(stages)
    if args.full:
        for script, _, stdout in stages:
            print(f"{script}:\n  " + "\n  ".join(stdout.strip().splitlines()[-3:]))
        return
    post = tuning.get("postprocess", "none")
    for s in tuning["scores"]:
        chosen = s["tta"] == tuning["tta"] and s.get("postprocess", "none") == post
        print(f"  {s['name']} (TTA {s['tta']}, {s.get('postprocess', 'none')}): {s['dice']:.5f}{' *' if chosen else ''}")
    print(f"out-of-fold Dice (TTA {tuning['tta']}, post-processing {post}, threshold {tuning['threshold']:.3f}): "
          f"{tuning['oof_dice']:.5f}")
    chosen = next(s for s in tuning["scores"] if s["name"].endswith("out-of-fold") and s["tta"] == tuning["tta"]
                  and s.get("postprocess", "none") == post)
    if "dice_at_default" in chosen:
        print(f"  at threshold 0.5 (what 03 uses for the full model when no fold models tuned it): "
              f"{chosen['dice_at_default']:.5f}")
    print(f"per car (no TTA): mean {cars.mean():.5f}, worst {cars.index[0]} {cars.iloc[0]:.5f}, "
          f"then {', '.join(f'{c} {d:.4f}' for c, d in cars.iloc[1:4].items())}")
    print(f"\nrow: | {args.preset} {' '.join(extra)} | {total / 60:.1f} | {tuning['oof_dice']:.5f} | "
          f"{cars.index[0]} {cars.iloc[0]:.4f} | {before:.1f} / {after:.1f} |")


if __name__ == "__main__":
    run_main(main)
