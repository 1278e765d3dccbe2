"""tuning.json: what 03_predict.py chose out-of-fold (TTA, post-processing, threshold, minimum mask area: one, or one
per scored class of a multi-class or multi-label task) and which models it was for.

03 writes it (``write``); 03 itself (to reuse it), 03 --images, 04 and its comparison table read it (``read``), which
checks every field's type and that the numbers fit together, so a damaged or foreign file is refused in one line that
names the 03 command making it again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from lib import files, postprocess
from lib.errors import PipelineError
from lib.metrics import level_of
from lib.task import RECORD as TASK_RECORD, Task
from lib.tiles import Tiling

PREDICT_STAGE = "03_predict.py"

# one row of the score table: binary rows add dice_at_default, multi-class rows class_dice; pooled rows add the gating
# (binary: min_area, dice_ungated; multi-class: min_areas, class_dice_ungated; multi-label: thresholds, min_areas)
_SCORE = {"name": str, "tta": str, "threshold": float, "dice": float, "postprocess": str,
          "dice_at_default?": float, "class_dice?": files.MapOf(float), "min_area?": float, "dice_ungated?": float,
          "thresholds?": files.MapOf(float), "min_areas?": files.MapOf(float),
          "class_dice_ungated?": files.MapOf(float)}
SCHEMA = {"experiment": str, "folds": files.ListOf((int, str)), "tta": str, "postprocess": str, "threshold": float,
          "level": int, "oof_dice": float, "size": files.ListOf(int), "orig_size": files.ListOf(int),
          "n_images": int, "tta_asked": str, "postprocess_asked": str, "models": files.ListOf(dict),
          "task": TASK_RECORD, "class_dice": files.MapOf(float), "scores": files.ListOf(_SCORE), "tuned": bool,
          "final": str, "min_area": float, "gating_asked": str, "tiling?": dict,
          "label_thresholds?": files.ListOf(float), "label_min_areas?": files.ListOf(float)}


@dataclass(frozen=True)
class Tuning:
    """The content of tuning.json."""
    experiment: str
    folds: list  # the fold models that tuned it ([] for a full model without fold models)
    tta: str
    postprocess: str
    threshold: float
    oof_dice: float  # at the chosen settings; -1.0 when not measured (untuned)
    size: tuple[int, int]  # (h, w) network size of the models and of the test maps
    orig_size: tuple[int, int] | None  # (H0, W0) of every training image; None when their sizes differ
    n_images: int  # out-of-fold images scored
    tta_asked: str  # --tta and --postprocess it was made for: another asks for a new tuning
    postprocess_asked: str
    models: list[dict]  # fingerprints of the fold models, then the full model when it predicts (final)
    task: Task
    scores: list[dict]  # every (model, TTA, post-processing) tried, as the comparison table lists them
    class_dice: dict[str, float] = field(default_factory=dict)  # multi-class: Dice per class at the choice
    tuned: bool = True  # False: a full model's untuned defaults
    final: str = ""  # files.FULL when the full model predicts the test set
    min_area: float = 0.0  # binary: a mask smaller than this fraction of its image is emptied (0: no gating)
    tiling: Tiling | None = None  # maps by sliding window (each at its image's size at the network's scale)
    gating_asked: str = "auto"  # --gating it was made for (off: min_area 0, not searched): another asks for a new one
    # multi-label: each label's own threshold and minimum area (``threshold`` is their mean, ``min_area`` 0);
    # multi-class: each class 1..C-1's minimum area (no thresholds: the argmax decides; ``min_area`` 0)
    label_thresholds: tuple[float, ...] = ()
    label_min_areas: tuple[float, ...] = ()

    @property
    def decision_threshold(self) -> float | tuple[float, ...]:
        """What ``Task.decide_maps`` takes: the threshold, or each label's (multi-label)."""
        return self.label_thresholds or self.threshold

    @property
    def decision_min_area(self) -> float | tuple[float, ...]:
        """What ``Task.decide_maps`` takes: the minimum area, or each scored class's (multi-label: each label's;
        multi-class: each of the classes 1..C-1)."""
        return self.label_min_areas or self.min_area

    @property
    def level(self) -> int:
        return level_of(self.threshold)

    @property
    def map_size(self) -> tuple[int, int]:
        """(rows, cols) of the test maps made with it (whole images; tiled maps: ``map_size_of``)."""
        return self.task.map_size(*self.size)

    def map_size_of(self, orig: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the test map of an image of ``orig`` (H0, W0): the network size, or with tiles the
        image's size at the network's scale."""
        return map_size(self.task, self.size, self.tiling, orig)

    @property
    def predictors(self) -> list[dict]:
        """The fingerprints of the models that predict the test set: the full model, else the fold models."""
        return self.models[-1:] if self.final == files.FULL else self.models

    def record(self) -> dict:
        """What tuning.json holds."""
        return {"experiment": self.experiment, "folds": list(self.folds), "tta": self.tta,
                "postprocess": self.postprocess, "threshold": self.threshold, "level": self.level,
                "oof_dice": self.oof_dice, "size": list(self.size), "orig_size": list(self.orig_size or ()),
                "n_images": self.n_images, "tta_asked": self.tta_asked, "postprocess_asked": self.postprocess_asked,
                "models": self.models, "task": self.task.record(), "class_dice": self.class_dice,
                "scores": self.scores, "tuned": self.tuned, "final": self.final,
                "min_area": self.min_area, "gating_asked": self.gating_asked,
                "tiling": self.tiling.record() if self.tiling else {}} | (
                    {"label_thresholds": list(self.label_thresholds)} if self.label_thresholds else {}) | (
                    {"label_min_areas": list(self.label_min_areas)} if self.label_min_areas else {})

    def replace(self, **changes) -> "Tuning":
        return dataclasses.replace(self, **changes)


def score_lines(tuning: Tuning) -> list[str]:
    """03's table of every (model, TTA, post-processing) tuning tried, a header line first; a threshold column only
    where a threshold decides (``Task.uses_threshold``; the argmax of the classes uses none):
    '  model                     TTA     post-processing  threshold  OOF Dice'."""
    threshold = tuning.task.uses_threshold
    width = max([len("model"), *(len(s["name"]) for s in tuning.scores)])

    def line(name: str, tta: str, post: str, thr: str, dice: str, gating: str = "") -> str:
        return (f"  {name:<{width}}  {tta:<6}  {post:<15}  " + (f"{thr:<9}  " if threshold else "") + dice
                + (f"  {gating}" if gating else ""))
    gated = any("dice_ungated" in s for s in tuning.scores)  # binary pooled rows: the gating tried with them
    per_label = any("thresholds" in s for s in tuning.scores)  # multi-label pooled rows
    per_class = any("class_dice_ungated" in s for s in tuning.scores)  # multi-class pooled rows
    return [line("model", "TTA", "post-processing", "threshold", "OOF Dice",
                 "per label: threshold, min area, OOF Dice" if per_label else
                 "per class: min area, OOF Dice (without gating)" if per_class else
                 "min area, OOF Dice without gating" if gated else "")] + [
        line(s["name"], s["tta"], s["postprocess"], f"{s['threshold']:.3f}", f"{s['dice']:.5f}",
             _gating_text(s, tuning.orig_size)) for s in tuning.scores]


def area_text(min_area: float, orig_size: tuple[int, int] | None) -> str:
    """'0.10% of the image (2455 px)' for messages (pixels where every image has one size)."""
    pixels = f" ({round(min_area * orig_size[0] * orig_size[1])} px)" if orig_size else ""
    return f"{min_area:.2%} of the image{pixels}"


def _gating_text(row: dict, orig_size: tuple[int, int] | None) -> str:
    """What a pooled score row of a binary task adds: the minimum area chosen and the Dice without gating; of a
    multi-label task: each label's threshold, minimum area and Dice; of a multi-class task: each class's minimum area
    and Dice, and its Dice without gating where it gates."""
    if "class_dice_ungated" in row:
        return "; ".join(f"{name}: {area_text(a, orig_size) if a else 'no gating'}, Dice {row['class_dice'][name]:.5f}"
                         + (f" ({row['class_dice_ungated'][name]:.5f})" if a else "")
                         for name, a in row["min_areas"].items())
    if "thresholds" in row:
        return "; ".join(f"{name}: {t:.3f}, "
                         f"{area_text(row['min_areas'][name], orig_size) if row['min_areas'][name] else 'no gating'}, "
                         f"Dice {row['class_dice'][name]:.5f}" for name, t in row["thresholds"].items())
    if "dice_ungated" not in row:
        return ""
    area = area_text(row["min_area"], orig_size) if row["min_area"] else "0 (no gating)"
    return f"{area}, {row['dice_ungated']:.5f}"


def map_size(task: Task, size: tuple[int, int], tiling: Tiling | None, orig: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of a stored map of an image of ``orig`` (H0, W0): ``Task.map_size`` of the network size
    ``size``, or with ``tiling`` of the image's size at the network's scale."""
    return task.map_size(*(tiling.map_hw(orig) if tiling else size))


def predict_command(folder: Path, *args: str, run: Path | None = None) -> str:
    """The 03_predict.py command (with ``args`` and the user's own flags) that writes the prediction folder
    ``folder`` (output/<experiment>) again: --output and --experiment name that folder, unless it is ``run``, the
    experiment folder this process was given (then the user's own flags already do)."""
    from params import command
    if run is not None and Path(folder).resolve() == Path(run).resolve():
        return command(PREDICT_STAGE, *args)
    return command(PREDICT_STAGE, *args, "--output", str(Path(folder).parent), "--experiment", Path(folder).name,
                   drop=("output", "experiment"))


def write(folder: Path, tuning: Tuning) -> Path:
    """Write ``folder/tuning.json`` atomically; returns its path."""
    path = folder / files.TUNING
    files.write_json(path, tuning.record())
    return path


def read(folder: Path, repair: str | None = None) -> Tuning:
    """``folder/tuning.json`` with its fields, their types and how they fit together checked; otherwise a
    PipelineError naming the file and what is wrong, ending with ``repair`` (default: the 03_predict.py command that
    tunes again)."""
    path = folder / files.TUNING
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no such prediction folder; make it with {predict_command(folder)} "
                            "or fix --preds/--experiment")
    repair = f"tune again: {predict_command(folder)}" if repair is None else repair
    r = files.read_json(path, PREDICT_STAGE, SCHEMA, repair)
    for key in ("size", "orig_size"):
        if key == "orig_size" and r[key] == []:  # images of several sizes
            continue
        if len(r[key]) != 2 or not all(v > 0 for v in r[key]):
            raise PipelineError(f"{path}: {key} {r[key]} is not [height, width]; {repair}")
    try:
        level = level_of(r["threshold"])
    except ValueError as e:
        raise PipelineError(f"{path}: {e}; {repair}") from None
    if level != r["level"]:
        raise PipelineError(f"{path}: level {r['level']} disagrees with threshold {r['threshold']} "
                            f"(level {level}); {repair}")
    if r["postprocess"] not in postprocess.CHOICES:
        raise PipelineError(f"{path}: postprocess {r['postprocess']!r} is not one of "
                            f"{', '.join(postprocess.CHOICES)}; {repair}")
    min_area = float(r["min_area"])
    if not 0.0 <= min_area < 1.0:
        raise PipelineError(f"{path}: min_area {min_area} is not a fraction of the image in [0, 1); {repair}")
    if r["task"]["classes"] < 1:
        raise PipelineError(f"{path}: task.classes {r['task']['classes']} is not >= 1; {repair}")
    task = Task.from_record(r["task"])
    labels = (tuple(r.get("label_thresholds", ())), tuple(r.get("label_min_areas", ())))
    if task.multilabel and r["tuned"] and not all(len(x) == task.classes for x in labels):
        raise PipelineError(f"{path}: a multi-label tuning needs label_thresholds and label_min_areas of "
                            f"{task.classes} labels each; {repair}")
    classes = len(task.scored)
    if not task.multilabel and not task.binary and (labels[0] or len(labels[1]) != (classes if r["tuned"] else 0)):
        raise PipelineError(f"{path}: a multi-class tuning needs label_min_areas of its {classes} classes "
                            f"{', '.join(task.names[1:])} (and no label_thresholds: the argmax decides); {repair}")
    if task.binary and (labels[0] or labels[1]):
        raise PipelineError(f"{path}: a binary tuning has no label_thresholds or label_min_areas; {repair}")
    if not all(0.0 < t < 1.0 for t in labels[0]) or not all(0.0 <= a < 1.0 for a in labels[1]):
        raise PipelineError(f"{path}: label_thresholds must lie in (0, 1) and label_min_areas in [0, 1); {repair}")
    try:
        tiling = Tiling.from_record(r.get("tiling"))
    except ValueError as e:
        raise PipelineError(f"{path}: {e}; {repair}") from None
    return Tuning(r["experiment"], r["folds"], r["tta"], r["postprocess"], float(r["threshold"]),
                  float(r["oof_dice"]), (r["size"][0], r["size"][1]),
                  (r["orig_size"][0], r["orig_size"][1]) if r["orig_size"] else None, r["n_images"], r["tta_asked"],
                  r["postprocess_asked"], r["models"], task, r["scores"], r["class_dice"], r["tuned"], r["final"],
                  min_area, tiling, r["gating_asked"], *labels)
