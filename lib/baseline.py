"""Average-mask baselines, scored like the models, and the table that puts the models beside them.

Every Carvana photo is shot from one of 16 fixed studio angles, so the average of the training masks
is already a fair guess (0.7491 public LB for one mask for every image). Two baselines:
    global: one mask, the average of the training masks;
    view:   one mask per view 01..16, the average of that view's training masks.
Out-of-fold, as 03_predict.py scores the models: for fold k the averages come from the other folds'
masks only, as uint8 levels round(mean * 255); fold k's images are counted with ``dice_histograms``
at full resolution, and one threshold is tuned on all out-of-fold images with ``best_threshold``.
For the test set the averages come from all training masks, thresholded at that tuned threshold;
every test image of a view gets the same mask, so each view's RLE is encoded once and reused.

Views exist only for Carvana-named data (lib/layout.py); other data has the global baseline only. When the training
images differ in size, the masks are summed in one frame (the network size: each mask brought there as an image is)
and each average is brought back to every image's own size to be scored or encoded; when they share one size, the
frame is that size and nothing is resized.

Memory: per-view sums at full resolution, (16, 1280, 1918) int32 = 157 MB, twice (all folds and the
current fold), plus the (16, 1280, 1918) uint8 averages; never all masks at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

import cv2

from lib import layout, rle
from lib.geometry import from_net, to_net
from lib.progress import progress
from lib.errors import PipelineError
from lib.metrics import best_threshold, binarize, dice_histograms, level_of
from lib.submission import submission_path, write
from lib.testmaps import Prediction

NAMES = ("global", "view")
TITLES = {"global": "average mask, global", "view": "average mask, per view", "majority": "majority class per pixel"}


@dataclass(frozen=True)
class MaskSums:
    """Training masks added up per view in one frame (the images' size when they share one)."""
    views: tuple[int, ...]  # view numbers (1..16), ascending; index i of sums/counts is views[i]; (0,): no views
    sums: NDArray[np.int32]  # (V, H0, W0): how many masks of the view cover each pixel
    counts: NDArray[np.int64]  # (V,): masks added per view

    @property
    def shape(self) -> tuple[int, int]:
        """(H0, W0) of the frame."""
        return int(self.sums.shape[1]), int(self.sums.shape[2])

    @property
    def has_views(self) -> bool:
        return min(self.views) > 0


@dataclass(frozen=True)
class Baseline:
    """Out-of-fold score of one baseline at its tuned threshold."""
    name: str  # "global" | "view" | "majority" (multi-class)
    threshold: float
    oof_dice: float
    n_images: int
    class_dice: dict | None = None  # multi-class: {class name: out-of-fold Dice}


def average_u8(sums: NDArray, count: int) -> NDArray[np.uint8]:
    """uint8 levels round(mean * 255) of ``count`` masks summed into ``sums`` ((H, W) integers)."""
    if count < 1:
        raise ValueError("average_u8 needs at least one mask")
    return np.rint(sums / count * 255.0).astype(np.uint8)


def global_average(s: MaskSums) -> NDArray[np.uint8]:
    """(H0, W0) uint8 average of every mask in ``s``."""
    return average_u8(s.sums.sum(axis=0), int(s.counts.sum()))


def view_averages(s: MaskSums) -> NDArray[np.uint8]:
    """(V, H0, W0) uint8 average per view; every view must have at least one mask."""
    empty = [v for v, n in zip(s.views, s.counts) if n == 0]
    if empty:
        raise PipelineError(f"no training mask of view(s) {', '.join(f'{v:02d}' for v in empty)} outside one "
                            "fold: the per-view baseline needs every view in several folds' cars")
    return np.stack([average_u8(s.sums[i], int(n)) for i, n in enumerate(s.counts)])


def frame_of(cache) -> tuple[int, int]:
    """(H, W) the masks are summed in: the images' own size when they share one, else the network size."""
    return tuple(cache.orig_size) if cache.orig_size is not None else tuple(cache.size)


def to_frame(mask: NDArray[np.bool_], frame: tuple[int, int]) -> NDArray:
    """(H0, W0) bool mask -> the frame's (H, W), 0/1 (nearest); as is when it has the frame's size."""
    if mask.shape == tuple(frame):
        return mask
    return to_net(mask.view(np.uint8), *frame, interpolation=cv2.INTER_NEAREST)


def sum_masks(cache, rows: Sequence[int], view_index: Sequence[int], views: tuple[int, ...],
              desc: str = "sum masks") -> MaskSums:
    """Add up the full-resolution truth of cache rows ``rows`` in ``frame_of(cache)``; ``view_index[j]`` is row j's
    index in ``views``."""
    h0, w0 = frame_of(cache)
    sums = np.zeros((len(views), h0, w0), np.int32)
    counts = np.zeros(len(views), np.int64)
    for r, v in progress(zip(rows, view_index), desc, total=len(rows)):
        sums[v] += to_frame(cache.full_mask(int(r)), (h0, w0))
        counts[v] += 1
    return MaskSums(views, sums, counts)


def oof_baselines(cache, split: pd.DataFrame) -> tuple[dict[str, Baseline], MaskSums]:
    """Score the baselines out-of-fold on every image of ``split`` (folds.csv rows; ids in ``cache``): both when the
    split has views (every ``view`` > 0), else the global one.

    Returns ({"global": Baseline[, "view": Baseline]}, the per-view sums of all training masks).
    """
    ids = list(split.id)
    rows = cache.rows(ids)
    view_of = split.view.to_numpy().astype(np.int64)
    if view_of.min() <= 0:  # no views: every image in one pseudo-view 0
        view_of = np.zeros(len(ids), np.int64)
    views = tuple(int(v) for v in np.unique(view_of))
    view_index = np.searchsorted(views, view_of)
    fold = split.fold.to_numpy()
    total = sum_masks(cache, rows, view_index, views, "baseline: sum all masks")
    names = NAMES if total.has_views else ("global",)
    hists = {name: np.zeros((len(ids), 2, 256), np.int64) for name in names}
    for k in np.unique(fold):
        members = np.flatnonzero(fold == k)
        part = sum_masks(cache, rows[members], view_index[members], views, f"baseline: sum fold {k}")
        np.subtract(total.sums, part.sums, out=part.sums)  # in place: the other folds' sums, no third array
        others = MaskSums(views, part.sums, total.counts - part.counts)
        if others.counts.sum() == 0:
            raise PipelineError(f"fold {k} holds every training image; the baselines need at least two folds")
        g = global_average(others)
        per_view = view_averages(others) if total.has_views else None
        for j in progress(members, f"baseline: score fold {k}"):
            truth = cache.full_mask(int(rows[j]))
            hists["global"][j] = dice_histograms(from_net(g, *truth.shape), truth)
            if per_view is not None:
                hists["view"][j] = dice_histograms(from_net(per_view[view_index[j]], *truth.shape), truth)
    results = {}
    for name in names:
        threshold, score, _ = best_threshold(hists[name])
        results[name] = Baseline(name, threshold, score, len(ids))
    return results, total


def baseline_rles(total: MaskSums, name: str, threshold: float, size: tuple[int, int] | None = None,
                  rle_order: str = "row") -> dict[int, str]:
    """View number -> RLE of the baseline test mask at ``size`` (default the frame's; the same string for every view
    for 'global')."""
    size = tuple(size or total.shape)
    if name == "global":
        code = rle.encode(binarize(from_net(global_average(total), *size), threshold), rle_order)
        codes = {v: code for v in total.views}
    elif name == "view":
        codes = {v: rle.encode(binarize(from_net(avg, *size), threshold), rle_order)
                 for v, avg in zip(total.views, view_averages(total))}
    else:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(NAMES)}")
    return codes


@dataclass
class BaselinePlan:
    """A baseline submission made ready before anything is written: its rows' keys and RLEs (one string per distinct
    size and view or class, shared) and what its manifest says. ``write_baseline_submission`` writes it."""
    path: Path
    keys: list[str]
    codes: list[str]
    fields: dict


def plan_baseline_submission(run: Path, total: MaskSums, result: Baseline, ids: Sequence[str],
                             sizes: Sequence[tuple[int, int]], keys: Sequence[str], rle_order: str = "row"
                             ) -> BaselinePlan:
    """``run/baseline_<name>.csv.gz``: the rows of one baseline for the test ids (submission order), every RLE made,
    nothing written.

    sizes: (H0, W0) of each test image; each distinct size and view is encoded once and reused. keys: the rows'
    ``img``. The per-view baseline gives a test image whose id names no view of the training masks the global
    average mask (the manifest counts them)."""
    sizes = [tuple(s) for s in sizes]
    views = [None] * len(ids)
    if result.name == "view":
        matches = [layout.CARVANA_ID.fullmatch(i) for i in ids]
        views = [int(m.group("view")) if m and int(m.group("view")) in total.views else None for m in matches]
    by_size: dict[tuple[int, int], dict[int, str]] = {}
    for size in dict.fromkeys(sizes):
        by_size[size] = baseline_rles(total, result.name, result.threshold, size, rle_order)
        if result.name == "view" and None in views:
            by_size[size][None] = baseline_rles(total, "global", result.threshold, size, rle_order)[total.views[0]]
    codes = [by_size[size][v if result.name == "view" else total.views[0]] for size, v in zip(sizes, views)]
    no_view = sum(v is None for v in views) if result.name == "view" else 0
    fields = {"inputs": [{"baseline": TITLES[result.name], "training_masks": int(total.counts.sum()),
                          "masks_per_view": dict(zip(map(str, total.views), total.counts.tolist()))}],
              "threshold": result.threshold, "level": level_of(result.threshold),
              "threshold_source": "tuned out-of-fold on the fold-wise average masks",
              "tta": "none", "oof_dice": result.oof_dice,
              "oof_dice_note": "out-of-fold full-resolution Dice of the average masks of the other folds",
              "orig_size": list(total.shape) if len(set(sizes)) <= 1 and sizes[:1] == [tuple(total.shape)] else None,
              "rle_order": rle_order}
    if no_view:
        fields["images_without_a_view"] = no_view
        fields["images_without_a_view_note"] = ("test ids with no view of the training masks (not <car>_<NN>, or "
                                                "a view no training image has) got the global average mask")
    return BaselinePlan(submission_path(run, f"baseline_{result.name}"), list(keys), codes, fields)


def write_baseline_submission(plan: BaselinePlan, sample_submission: Path) -> dict:
    """Write a planned baseline submission with its manifest; returns the manifest."""
    return write(plan.path, plan.keys, plan.codes, plan.fields, sample_submission)


# --- the comparison table ---
def with_post(tta: str, post: str | None) -> str:
    """The table's TTA cell: the mode, and the post-processing where there is one ('hflip + largest region')."""
    return f"{tta} + largest region" if post == "largest" else tta


def comparison_table(baselines: dict[str, Baseline], preds: Sequence[Prediction], manifest: dict | None,
                     test_dice: dict[str, float] | None = None, truth: Path | None = None,
                     test_class_dice: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown table: baselines, each folder's tuning.json scores, the submission; a test column if scored (against
    the truth folder ``truth``, named in the caption), a threshold column only where a threshold decides
    (``Task.uses_threshold``), and for a multi-class task a column per class, out-of-fold ("road OOF") and, if
    scored, on the test images ("road test"). A row that repeats the one above in every figure is not listed again:
    its name joins that row's ("fold 0 model = 1-fold out-of-fold").

    test_dice: submission file name -> local test Dice (``score_submission``); keys 'baseline_<name>.csv.gz'
    for the baselines and ``manifest['submission']`` for the model. test_class_dice: the same keys -> Dice per class.
    """
    test_dice, test_class_dice = test_dice or {}, test_class_dice or {}
    rows = [(TITLES[b.name], "none", b.threshold, b.oof_dice, test_dice.get(f"baseline_{b.name}.csv.gz"),
             b.class_dice or {}, test_class_dice.get(f"baseline_{b.name}.csv.gz", {})) for b in baselines.values()]
    for p in preds:
        prefix = f"{p.tuning.experiment}: " if len(preds) > 1 else ""
        rows += [(prefix + s["name"], with_post(s["tta"], s["postprocess"]), s["threshold"], s["dice"], None,
                  s.get("class_dice") or {}, {}) for s in p.tuning.scores]
    if manifest is not None:
        rows.append((f"submission {manifest['submission']}", with_post(manifest["tta"], manifest.get("postprocess")),
                     manifest["threshold"], manifest["oof_dice"], test_dice.get(manifest["submission"]),
                     preds[0].tuning.class_dice if manifest["oof_dice"] is not None else {},
                     test_class_dice.get(manifest["submission"], {})))
    classes = list(dict.fromkeys(name for row in rows for name in row[5]))
    test_classes = list(dict.fromkeys(name for row in rows for name in row[6]))
    scored = bool(test_dice)
    threshold = preds[0].tuning.task.uses_threshold if preds else True
    n = next(iter(baselines.values())).n_images if baselines else max(p.tuning.n_images for p in preds)
    what = "mean over images of the mean Dice of the classes" if classes else "mean over images"
    caption = (f"Full-resolution Dice, {what}; out-of-fold (OOF) on {n} training images"
               + (f"; test on the masks in {truth if truth is not None else 'test_masks/'}" if scored else "") + "."
               + ("" if threshold else " The argmax of the classes decides each pixel: no threshold.")
               + (" Per class: `<class> OOF` out-of-fold" + (", `<class> test` on the test images" if test_classes
                                                             else "") + "." if classes else ""))
    header = (["system", "TTA"] + (["threshold"] if threshold else []) + ["OOF Dice"]
              + (["test Dice"] if scored else []) + [f"{c} OOF" for c in classes] + [f"{c} test" for c in test_classes])
    lines, last = [caption, "", "| " + " | ".join(header) + " |",
                   "|---|---|" + "---:|" * (len(header) - 2)], None
    for name, tta, thr, oof, test, per_class, per_class_test in rows:
        cells = ([tta] + ([f"{thr:.3f}"] if threshold else []) + [_fmt(oof)] + ([_fmt(test)] if scored else [])
                 + [_fmt(per_class.get(c)) for c in classes] + [_fmt(per_class_test.get(c)) for c in test_classes])
        if cells == last:  # the same figures as the row above: one row, both names
            lines[-1] = lines[-1].replace(" | ", f" = {name} | ", 1)
            continue
        lines.append("| " + " | ".join([name] + cells) + " |")
        last = cells
    return "\n".join(lines) + "\n"


# --- multi-class: the majority class of each pixel ---
def class_counts(cache, rows: Sequence[int], frame: tuple[int, int], classes: int, desc: str) -> NDArray[np.int32]:
    """(C, H, W) how many training masks give each pixel of the frame each class (labels brought to the frame,
    nearest)."""
    h, w = frame
    counts = np.zeros((classes, h, w), np.int32)
    for r in progress(rows, desc):
        labels = cache.full_mask(int(r))
        if labels.shape != frame:
            labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        for c in range(classes):
            counts[c] += labels == c
    return counts


def majority_labels(counts: NDArray[np.int32], size: tuple[int, int] | None = None) -> NDArray[np.uint8]:
    """(H, W) uint8: each pixel's most frequent class, at ``size`` (nearest) when given."""
    labels = counts.argmax(0).astype(np.uint8)
    if size is not None and labels.shape != tuple(size):
        labels = cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return labels


def oof_majority(cache, split: pd.DataFrame, task) -> tuple[Baseline, NDArray[np.int32]]:
    """The majority-class baseline scored out-of-fold (fold k's images against the other folds' majority), and the
    class counts of all training masks (for the test submission)."""
    ids = list(split.id)
    rows = cache.rows(ids)
    frame = cache.orig_size or cache.size
    fold = split.fold.to_numpy()
    total = class_counts(cache, rows, frame, task.classes, "baseline: count all classes")
    dices = np.zeros((len(ids), len(task.scored)))
    for k in np.unique(fold):
        members = np.flatnonzero(fold == k)
        others = total - class_counts(cache, rows[members], frame, task.classes, f"baseline: count fold {k}")
        for j in members:
            truth = cache.full_mask(int(rows[j]))
            dices[j] = task.class_dices(majority_labels(others, truth.shape), truth)
    per_class = dices.mean(0)
    return Baseline("majority", 0.5, float(dices.mean()), len(ids),
                    {task.names[c]: float(d) for c, d in zip(task.scored, per_class)}), total


def plan_majority_submission(run: Path, counts: NDArray[np.int32], result: Baseline, task,
                             keys: Sequence[str], class_rows: Sequence[tuple[str, int]],
                             sizes: dict[str, tuple[int, int]], rle_order: str = "row") -> BaselinePlan:
    """``run/baseline_majority.csv.gz``: the majority-class baseline as a multi-class submission (rows ``keys``, each
    (image, class) of ``class_rows``, each image at its size in ``sizes``), every RLE made, nothing written."""
    by_size: dict[tuple[int, int], dict[int, str]] = {}
    for size in dict.fromkeys(tuple(s) for s in sizes.values()):
        labels = majority_labels(counts, size)
        by_size[size] = {c: rle.encode(labels == c, rle_order) for c in task.scored}
    codes = [by_size[tuple(sizes[i])][c] for i, c in class_rows]
    fields = {"inputs": [{"baseline": TITLES["majority"], "training_masks": int(counts[:, 0, 0].sum())}],
              "threshold": 0.5, "level": level_of(0.5), "threshold_source": "none: the majority class decides",
              "tta": "none", "oof_dice": result.oof_dice, "class_dice": result.class_dice,
              "oof_dice_note": "out-of-fold mean class Dice of the other folds' majority classes",
              "rle_order": rle_order, "task": task.record()}
    return BaselinePlan(submission_path(run, f"baseline_{result.name}"), list(keys), codes, fields)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.5f}"
