"""The held-out cars of ``bench_recipe.py --holdout G``: an input folder of links that keeps fold G's cars of the
sample's car-grouped split out of training and puts their photos in test/, and the score of the submission 04
wrote for them against their true masks at full resolution.

The input folder copies nothing: its photos and masks are links into the sample, one per file; only its
sample_submission.csv (the kept-out ids) is written. Binary masks (Carvana's), in the plain ``img,rle_mask`` form.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from lib import files, rle
from lib.cache import pair_paths
from lib.errors import PipelineError, listing
from lib.metrics import dice
from lib.submission import read_submission
from lib.task import BINARY, Task


def parse_groups(text: str, n_folds: int) -> list[int]:
    """'0,2' -> [0, 2]: the folds of an ``n_folds`` split to keep out, one run each; ValueError saying what is wrong."""
    try:
        groups = [int(g) for g in text.split(",")]
    except ValueError:
        raise ValueError(f"--holdout {text}: give fold numbers, e.g. --holdout 0 or --holdout 0,2") from None
    if len(set(groups)) != len(groups):
        raise ValueError(f"--holdout {text}: a fold is named twice")
    out = [g for g in groups if not 0 <= g < n_folds]
    if out:
        raise ValueError(f"--holdout {text}: the split has folds 0..{n_folds - 1} (--n-folds {n_folds}), not "
                         f"{', '.join(map(str, out))}")
    return groups


def sample_row(sample_submission: Path) -> tuple[list[str], list[str]]:
    """(header, the fields after the key of the first row) of a plain ``img,rle_mask`` sample_submission.csv."""
    with open(sample_submission, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header, first = next(reader, None), next(reader, None)
    if header is None or [h.strip() for h in header] != ["img", "rle_mask"] or first is None or len(first) != 2:
        raise PipelineError(f"{sample_submission}: expected a header img,rle_mask and rows of two fields; the held-out "
                            "run lists its test ids in that form")
    return header, first[1:]


def build_input(sample: Path, split: pd.DataFrame, group: int, root: Path, mask_suffix: str = "",
                task: Task = BINARY) -> list[str]:
    """Make ``root`` (a new folder) the input of a run that never sees fold ``group``'s cars of ``split`` (01's
    folds.csv: id, car, fold): train/ and train_masks/ hold a link to each photo and mask of the other cars, test/ a
    link to each photo of the kept-out cars under its own name, sample_submission.csv the sample's header and one row
    per kept-out image in id order (its rle field as the sample's first row has it); the sample's metadata.csv, where
    it has one, is linked too. Returns the kept-out ids, sorted."""
    if root.exists():
        raise PipelineError(f"{root}: exists; the held-out input is made in a new folder")
    header, rest = sample_row(sample / files.SAMPLE_SUBMISSION)
    kept_out = sorted(split.id[split.fold == group])
    if not kept_out:
        raise PipelineError(f"fold {group} of the split holds no images")
    ids = sorted(split.id)
    pairs = dict(zip(ids, pair_paths(sample, ids, mask_suffix, task)))
    held = set(kept_out)
    for name in (files.TRAIN, files.TRAIN_MASKS, files.TEST):
        (root / name).mkdir(parents=True)
    for image_id, (image, mask) in pairs.items():
        if not isinstance(mask, Path) or mask.parent.resolve() != (sample / files.TRAIN_MASKS).resolve():
            raise PipelineError(f"{sample}: the truth of {image_id} is not a file in {files.TRAIN_MASKS}/; the "
                                "held-out input links mask files")
        if image_id in held:
            (root / files.TEST / image.name).symlink_to(image.resolve())
        else:
            (root / files.TRAIN / image.name).symlink_to(image.resolve())
            (root / files.TRAIN_MASKS / mask.name).symlink_to(mask.resolve())
    if (sample / files.METADATA_CSV).is_file():
        (root / files.METADATA_CSV).symlink_to((sample / files.METADATA_CSV).resolve())
    rows = [files.csv_row(*header)] + [files.csv_row(pairs[i][0].name, *rest) for i in kept_out]
    files.write_text_atomic(root / files.SAMPLE_SUBMISSION, "".join(rows))
    return kept_out


def score(path: Path, truths: dict[str, Path], rle_order: str = "row", task: Task = BINARY) -> dict[str, float]:
    """{id: Dice} of each row of the submission ``path`` against its truth (``truths``: id -> mask file), decoded at
    the mask's own size: 2|A∩B| / (|A| + |B|), 1 when both are empty. PipelineError when the submission's ids are
    not exactly the truths' or a row's RLE does not fit its mask."""
    rows = list(read_submission(path))
    ids = [i for i, _ in rows]
    if sorted(ids) != sorted(truths):
        missing, extra = sorted(set(truths) - set(ids)), sorted(set(ids) - set(truths))
        raise PipelineError(f"{path}: {len(ids)} rows for the {len(truths)} held-out images (missing: "
                            f"{listing(missing) or 'none'}; not held out or repeated: "
                            f"{listing(extra) or ('repeated ids' if len(ids) != len(set(ids)) else 'none')})")
    out = {}
    for image_id, code in rows:
        truth = task.read_truth(truths[image_id])
        try:
            pred = rle.decode(code, task.truth_size(truth), rle_order)
        except ValueError as e:
            raise PipelineError(f"{path}: bad RLE for {image_id}: {e}") from None
        out[image_id] = dice(pred, truth)
    return out


def summarize(dices: dict[str, float], split: pd.DataFrame) -> dict:
    """The figures of one held-out run from its per-image ``dices`` and the split (id -> car): mean over images,
    each car's mean (worst first), the worst car and the 5th percentile of the images."""
    table = pd.DataFrame({"id": list(dices), "dice": list(dices.values())}).merge(split[["id", "car"]], on="id")
    cars = table.groupby("car").dice.mean().sort_values(kind="stable")
    return {"mean": float(table.dice.mean()), "worst_car": str(cars.index[0]), "worst_car_dice": float(cars.iloc[0]),
            "p5": float(np.percentile(table.dice, 5)), "cars": {str(c): float(d) for c, d in cars.items()},
            "images": {i: float(d) for i, d in sorted(dices.items())}}


def per_car(runs: dict) -> pd.Series:
    """Each held-out car's mean Dice over its photos, from a holdout.json's content (all its groups)."""
    rows = [(car, d) for g in runs["groups"] for car, d in g["cars"].items()]
    return pd.Series(dict(rows), dtype=float).sort_index()


def paired(a: dict, b: dict, draws: int = 10000, seed: int = 0, common: bool = False, advice: str = "") -> dict:
    """Recipe ``b`` against recipe ``a`` on the same held-out cars (two holdout.json contents): the mean per-car
    difference b - a, and a 90% interval for it from resampling the cars (the unit that varies between data sets;
    the photos of a car are not independent). Runs that held out other cars: with ``common``, compared on the cars
    both held out (at least one); else PipelineError ending in ``advice``."""
    ca, cb = per_car(a), per_car(b)
    if list(ca.index) != list(cb.index):
        shared = sorted(set(ca.index) & set(cb.index))
        if not (common and shared):
            only_a, only_b = sorted(set(ca.index) - set(cb.index)), sorted(set(cb.index) - set(ca.index))
            raise PipelineError(f"the two runs held out other cars (only in the first: {listing(only_a) or 'none'}; "
                                f"only in the second: {listing(only_b) or 'none'}; {len(shared)} in both)"
                                + (f"; {advice}" if advice else ""))
        ca, cb = ca[shared], cb[shared]
    diff = (cb - ca).to_numpy()
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [5, 95])
    return {"n_cars": len(diff), "a": float(ca.mean()), "b": float(cb.mean()), "diff": float(diff.mean()),
            "low": float(low), "high": float(high), "better": int((diff > 0).sum()), "worse": int((diff < 0).sum()),
            "cars": {c: (float(ca[c]), float(cb[c])) for c in ca.index}}
