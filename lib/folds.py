"""Car-grouped K-fold split: a car's views never straddle two folds.

Folds are balanced by car: stratified on make (where ``metadata.csv`` has it) or on the car's
mean mask area (quantile bins), with scikit-learn's StratifiedGroupKFold, deterministic by seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lib import files
from lib.errors import PipelineError

COLUMNS = ["id", "car", "view", "fold"]


def car_strata(table: pd.DataFrame, n_folds: int, metadata: pd.DataFrame | None = None) -> pd.Series:
    """One label per image for stratification: the car's make, else its mean-mask-area bin."""
    if metadata is not None and "make" in metadata:
        make = table.car.map(metadata.set_index("id")["make"]).fillna("unknown")
        counts = make.groupby(table.car).first().value_counts()
        if counts.min() >= n_folds:  # every make can be spread over the folds
            return make
    area = table.groupby("car").mask_area.transform("mean")
    n_bins = int(max(1, min(n_folds, table.car.nunique() // n_folds)))
    return pd.qcut(area.rank(method="first"), n_bins, labels=False).astype(str)


def split(table: pd.DataFrame, n_folds: int, seed: int, metadata: pd.DataFrame | None = None) -> pd.DataFrame:
    """(id, car, view) table -> the same rows with a ``fold`` column in 0..n_folds-1."""
    n_cars = table.car.nunique()
    if n_cars < n_folds:
        noun = "car" if len(table) and (table.view > 0).all() else "group"  # Carvana's <car>_<NN> ids, else groups
        raise PipelineError(f"{n_cars} {noun}(s) cannot make {n_folds} {noun}-grouped folds; lower --n-folds")
    strata = car_strata(table, n_folds, metadata)
    from sklearn.model_selection import StratifiedGroupKFold  # here: a second of import the later stages skip
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(table), -1)
    for k, (_, val) in enumerate(sgkf.split(table, strata, groups=table.car)):
        fold[val] = k
    out = table[["id", "car", "view"]].copy()
    out["fold"] = fold
    return out.sort_values("id").reset_index(drop=True)


def save(folds: pd.DataFrame, output: Path, force: bool) -> bool:
    """Write folds.csv; an existing different split is kept unless ``force``. Returns True if written."""
    path = files.folds_csv(output)
    if path.exists():
        try:
            old = read(output)
        except PipelineError:
            old = None  # damaged: replaced with --force, as any other different split
        if old is not None and old.equals(folds[COLUMNS]):
            return False
        if not force:
            from params import rerun
            raise PipelineError(f"{path}: a different split exists (models trained on it would be mixed); "
                                f"replace it: {rerun('--force')}, or use another --output")
    files.write_text_atomic(path, folds[COLUMNS].to_csv(index=False))
    return True


def read(output: Path) -> pd.DataFrame:
    """The split written by 01_prepare.py."""
    from params import command
    path = files.folds_csv(output)
    if not path.exists():
        raise PipelineError(f"{path}: no fold split; run {command('01_prepare.py')} first")
    try:
        df = pd.read_csv(path, dtype={"id": str, "car": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise PipelineError(f"{path}: unreadable ({str(e).splitlines()[0]}); write it again: "
                            f"{command('01_prepare.py', '--force')}") from None
    if list(df.columns) != COLUMNS or df.empty or df.fold.isna().any() or not pd.api.types.is_integer_dtype(df.fold):
        raise PipelineError(f"{path}: not a split written by 01_prepare.py (columns {list(df.columns)}, "
                            f"{len(df)} rows); write it again: {command('01_prepare.py', '--force')}")
    return df


def n_folds_of(folds: pd.DataFrame) -> int:
    return int(folds.fold.max()) + 1


def fold_digest(folds: pd.DataFrame, fold: int | str) -> str:
    """A short hash of which images fold ``fold`` validates on and which it trains on: a model, its checkpoints
    and its out-of-fold file carry it, so that a re-split (``01_prepare.py --force``) is never mixed with them.
    ``fold`` "full" (files.FULL): every image trains, none validates."""
    import hashlib
    full = fold == files.FULL
    val = [] if full else sorted(folds.id[folds.fold == fold])
    train = sorted(folds.id) if full else sorted(folds.id[folds.fold != fold])
    return hashlib.sha256(("\n".join(val) + "\0" + "\n".join(train)).encode()).hexdigest()[:16]
