"""Local test scores of submissions against ``input/test_masks`` (only the demo data has test truth): 04 --score.

Each row's RLE is decoded at its truth mask's own size and scored the Kaggle way: the mean over images of the Dice
(binary), or of the mean Dice of the classes 1..C-1 (multi-class).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lib import files, layout, rle
from lib.errors import PipelineError, listing
from lib.inputs import read_mask
from lib.metrics import dice
from lib.submission import read_submission
from lib.task import Task

MAX_LISTED = 10  # missing truth masks named in an error before "... and N more"


def truth_folder(root: Path) -> Path:
    """The folder of test truth masks that --score reads: ``root/test_masks`` (the demo data has one)."""
    return root / files.TEST_MASKS


def truth_paths(root: Path, ids: Sequence[str], mask_suffix: str = "") -> list[Path]:
    """The mask of each id in ``root/test_masks`` (named as training masks are: lib/layout.py); PipelineError naming
    the missing ones."""
    from params import command, rerun
    folder = truth_folder(root)
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no test truth to score against (only the demo data has it: "
                            f"{command('01_prepare.py', '--demo')}); for Kaggle data, without --score: "
                            f"{rerun(drop=('--score',))}")
    found, ambiguous, _ = layout.match_masks(ids, folder, mask_suffix, [])  # others: not scored
    if ambiguous:
        raise PipelineError(ambiguous[0])
    missing = [i for i in ids if i not in found]
    if missing:
        like = next(iter(found.items()), None)  # name the missing masks as the others are named
        rest = like[1].name[len(like[0]):] if like and like[1].is_file() else "_mask.gif"
        raise PipelineError(f"{folder}: {len(missing)} of {len(ids)} truth masks missing: "
                            f"{listing([i + rest for i in missing], MAX_LISTED)}")
    return [found[i] for i in ids]


def score_submission(path: Path, root: Path, mask_suffix: str = "", rle_order: str = "row") -> float:
    """Mean Dice over the submission's rows against ``root/test_masks``, each at its own full size, the Kaggle way."""
    return score_submissions([path], root, mask_suffix, rle_order)[path]


def score_submissions(paths: Sequence[Path], root: Path, mask_suffix: str = "", rle_order: str = "row"
                      ) -> dict[Path, float]:
    """``score_submission`` of several submissions, decoding each truth mask once for all of them."""
    rows = {}
    for path in paths:
        rows[path] = list(read_submission(path))
        if not rows[path]:
            raise PipelineError(f"{path}: no rows to score")
    ids = list(dict.fromkeys(i for path_rows in rows.values() for i, _ in path_rows))
    truths = dict(zip(ids, truth_paths(root, ids, mask_suffix)))
    codes: dict[str, list[tuple[Path, str]]] = {i: [] for i in ids}
    for path, path_rows in rows.items():
        for image_id, code in path_rows:
            codes[image_id].append((path, code))
    scores: dict[Path, list[float]] = {path: [] for path in paths}
    for image_id, image_codes in codes.items():
        truth = read_mask(truths[image_id])
        for path, code in image_codes:
            try:
                pred = rle.decode(code, truth.shape, rle_order)
            except ValueError as e:
                raise PipelineError(f"{path}: bad RLE for {image_id}: {e}") from None
            scores[path].append(dice(pred, truth))
    return {path: float(np.mean(s)) for path, s in scores.items()}


def score_class_submissions(paths: Sequence[Path], root: Path, task: Task, class_rows: dict[str, tuple[str, int]],
                            mask_suffix: str = "", rle_order: str = "row") -> dict[Path, tuple[float, dict]]:
    """Multi-class submissions against ``root/test_masks`` label masks: {path: (mean over images of the mean Dice
    of the classes 1..C-1, {class name: its mean Dice})}. class_rows: row id -> (image id, class)."""
    rows = {path: list(read_submission(path, strip_extension=False)) for path in paths}
    images = list(dict.fromkeys(class_rows[k][0] for path_rows in rows.values() for k, _ in path_rows
                                if k in class_rows))
    truths = dict(zip(images, truth_paths(root, images, mask_suffix)))
    slot = {c: k for k, c in enumerate(task.scored)}
    out = {}
    for path, path_rows in rows.items():
        unknown = [k for k, _ in path_rows if k not in class_rows]
        if unknown:
            raise PipelineError(f"{path}: rows {', '.join(unknown[:5])} are not <image id>_<class name> of this task")
        by_image: dict[str, dict[int, str]] = {}
        for key, code in path_rows:
            image_id, c = class_rows[key]
            by_image.setdefault(image_id, {})[c] = code
        dices = []
        for image_id, codes in by_image.items():
            truth = task.read_truth(truths[image_id])
            try:
                pred = task.decision_of_rles(codes, task.truth_size(truth), rle_order)
            except ValueError as e:
                raise PipelineError(f"{path}: bad RLE for {image_id}: {e}") from None
            dices.append(task.class_dices(pred, truth))
        per_class = np.mean(dices, axis=0)
        out[path] = (float(per_class.mean()), {task.names[c]: float(per_class[slot[c]]) for c in task.scored})
    return out
