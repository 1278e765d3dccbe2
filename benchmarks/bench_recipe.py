"""A CPU recipe end to end on the real sample: the four stages' wall times, the machine's speed in the same run,
and the car-grouped out-of-fold Dice with its worst car.

    .venv/bin/python benchmarks/bench_recipe.py                                   # --preset cpu, temp folder
    .venv/bin/python benchmarks/bench_recipe.py --keep out/r1 -- --epochs 16      # other settings after --
    .venv/bin/python benchmarks/bench_recipe.py --full --test 572  # the README's 20-minute run (the preset's 29 epochs)

Runs 01 -> 02 --fold all -> 03 -> 04 --baselines with ``--preset cpu --input ../shared/carvana_sample`` (or
--input) plus the flags after ``--``, into a fresh output folder. The sample has no test/ folder, so 03 tunes TTA
and threshold on the out-of-fold maps and 04 writes the comparison table: what the recipe would submit is scored on
cars its models never saw. As bench_demo.py does, it times a fixed reference load (the demo network's training
steps on random data) right before and right after, since this kind of machine runs the same work up to 2x slower
from one hour to the next. Prints one row for benchmarks/results/recipes.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench_demo import reference_speed, run_stages  # noqa: E402
from lib import files, folds as folds_mod  # noqa: E402
from lib.cache import open_for  # noqa: E402
from lib.oof import image_dices, load_oof  # noqa: E402
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
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="settings after --, e.g. -- --epochs 16")
    args = parser.parse_args()
    extra = [f for f in args.flags if f != "--"]
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
    total = sum(s for _, s, _ in stages)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    print(f"reference load (demo network training steps, random data): {before:.1f} images/s before, "
          f"{after:.1f} after\n")
    print("| stage | seconds |\n|---|---:|")
    for script, seconds, _ in stages:
        print(f"| {script} | {seconds:.1f} |")
    print(f"| **total** | **{total:.1f}** ({total / 60:.2f} min) |\n")
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
    main()
