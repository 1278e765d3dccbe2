"""What depends on the task, in one place: binary masks (``--classes 1``, Carvana), C classes, one label per pixel, or
C overlapping labels (``--classes C --multilabel``: clouds, steel defects, organs).

The stages ask the task object rather than branching on the number of classes themselves:

| fact | binary (C = 1) | multi-class (C >= 2) | multi-label (--multilabel, C labels, C <= 8) |
|---|---|---|---|
| network output | 1 channel of logits | C channels of logits | C channels of logits |
| probabilities | sigmoid | softmax over the channels | a sigmoid per channel |
| loss (``--loss``, lib/losses.py) | smp's binary mode: BCE + soft Dice, ... | multiclass mode: CE + soft Dice, ... | multilabel mode: BCE + soft Dice, ... |
| truth read from a mask | (H, W) bool: a 0/1 or 0/255 mask, an instance folder's union | (H, W) uint8 labels (objects of two classes may not overlap) | (C, H, W) bool from an instance folder ``<n>__<label>.png`` or ``train.csv`` rows, overlaps kept |
| truth kept at full resolution | its bits | ``truth_bits`` bit planes of the labels | C bit planes, one per label |
| what 01 notes about the truth | (nothing more than the area) | each class's share of the pixels, classes in no mask | each label's share of the pixels, labels in no mask |
| training target at the network size | soft mask 0..255 (area fraction at edges) | label map, nearest | (H, W) uint8, bit c set where label c is (nearest); ``target`` unpacks it to (N, C, H, W) 0/1 |
| map (stored probabilities) | (H, W) uint8 | (C * H, W) uint8: the C class maps stacked down | (C * H, W) uint8, stacked as multi-class |
| decision at the image's size | map (post-processed) > threshold, emptied below min-area: a bool mask | argmax over the classes, a class under its min-area made background: labels | each label's map > its threshold, emptied below its min-area: (C, H, W) bool |
| picture of a decision | the mask tinted and outlined | each class tinted in its colour | each label tinted and outlined (overlaps blend) |
| score of an image | Dice, 1 when both are empty | Dice of each class 1..C-1 (1 when both are empty), their mean | Dice of each label 0..C-1 (1 when both are empty), their mean |
| figures per class (logs, tuning) | none: the image score is the one class's | ``{name: value}`` of classes 1..C-1 | ``{name: value}`` of every label |
| submission rows of an image | ``<file name>`` | ``<image id>_<class name>`` for class 1..C-1 | ``<file name>_<label name>`` for every label (Severstal: names 1..C, the default; Clouds: Fish, ...); with a Kaggle sample_submission.csv its form (lib/kagglecsv.py) |

A Task is made in one of two ways: ``Task.of(p)`` from a run's settings, ``Task.from_record(record)`` from what a
file recorded (``record()``); ``BINARY`` is the binary task's value.

Class 0 is the background of the binary and multi-class tasks: it is never a submission row and never scored on its
own. A multi-label task has no background channel: its C channels are the C labels (0..C-1, names default to "1".."C",
Severstal's ClassIds), each scored and submitted; a pixel in no label is background.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from lib import postprocess, rle
from lib.errors import PipelineError
from lib.files import ListOf
from lib.geometry import to_net
from lib.metrics import dice, gate, gated_dice_of_areas, level_of


# what Task.record() writes, as a files.schema_problem schema; checkpoints add the colours (pictures draw with them)
RECORD = {"classes": int, "names": ListOf(str), "multilabel?": bool, "colors?": ListOf(ListOf(int))}

MAX_LABELS = 8  # a multi-label network-size target holds a pixel's labels as the bits of one uint8


@dataclass(frozen=True)
class Task:
    classes: int = 1  # 1: binary masks; C >= 2: labels 0..C-1 per pixel
    names: tuple[str, ...] = ()  # class names in index order (multi-class); "" for binary
    # RGB of each class in colour masks and pictures (--class-colors), if given: how classes look, not which task
    # this is (two tasks that differ only in colours are equal, and maps or tunings do not record them)
    colors: tuple[tuple[int, int, int], ...] = field(default=(), compare=False)
    multilabel: bool = False  # C overlapping labels, a sigmoid each (--multilabel)

    def __post_init__(self):
        if self.classes < 1:
            raise ValueError(f"classes must be >= 1, got {self.classes}")
        if self.multilabel and self.classes > MAX_LABELS:
            raise PipelineError(f"--multilabel takes at most {MAX_LABELS} labels, --classes is {self.classes}")
        if not self.binary and len(self.names) != self.classes:
            first = 1 if self.multilabel else 0
            object.__setattr__(self, "names", tuple(f"{'' if first else 'class'}{k + first}"
                                                    for k in range(self.classes)))

    @classmethod
    def of(cls, p) -> Task:
        """The task of a run's settings: ``--classes`` and, when given, ``--class-colors`` (names and colours) or
        ``--class-names``."""
        names: tuple[str, ...] = ()
        colors: tuple = ()
        if p.class_colors:
            names, colors = read_class_colors(Path(p.class_colors))
            if len(names) != p.classes:
                raise PipelineError(f"{p.class_colors}: lists {len(names)} classes but --classes is {p.classes}; give "
                                    f"--classes {len(names)}")
        elif p.class_names:
            names = tuple(x.strip() for x in p.class_names.split(","))
            if len(names) != p.classes:
                raise PipelineError(f"--class-names lists {len(names)} classes but --classes is {p.classes}")
        return cls(p.classes, names, colors, multilabel=p.multilabel)

    @classmethod
    def from_record(cls, record: dict) -> Task:
        """The task a checkpoint, tuning or map folder recorded (``record()``; ``RECORD`` is its schema), with the
        class colours when it kept them (``checkpoint_record()``)."""
        colors = tuple(tuple(int(v) for v in c) for c in record.get("colors", ()))
        return cls(int(record["classes"]), tuple(record["names"]), colors,  # type: ignore[arg-type]
                   multilabel=bool(record.get("multilabel", False)))

    @property
    def binary(self) -> bool:
        return self.classes == 1 and not self.multilabel

    @property
    def channels(self) -> int:
        """Output channels of the network."""
        return 1 if self.binary else self.classes

    @property
    def scored(self) -> list[int]:
        """The classes a score and a submission are about: [1] (the object), 1..C-1 or every label 0..C-1."""
        if self.multilabel:
            return list(range(self.classes))
        return [1] if self.binary else list(range(1, self.classes))

    @property
    def truth_bits(self) -> int:
        """Bit planes that hold one pixel's truth at full resolution: 1 (binary), ceil(log2 C) or C (multi-label)."""
        if self.multilabel:
            return self.classes
        return 1 if self.binary else max(1, math.ceil(math.log2(self.classes)))

    def describe(self) -> str:
        if self.multilabel:
            return f"{self.classes} overlapping labels ({', '.join(self.names)})"
        return "binary masks" if self.binary else f"{self.classes} classes ({', '.join(self.names)})"

    # --- the truth: read, checked, stored ---
    def read_truth(self, path: Path) -> NDArray:
        """The truth of one image from its mask file or instance folder: (H, W) bool (``inputs.read_mask``) or uint8
        labels (``inputs.read_labels``, or ``inputs.read_class_instances`` for a folder) or (C, H, W) bool labels
        (``inputs.read_label_instances``), or from its rows of a Kaggle ``train.csv`` (``path`` a
        ``kagglecsv.CsvTruth``: ``inputs.read_csv_truth``); PipelineError naming the file when it is not one."""
        from lib import inputs, kagglecsv
        if isinstance(path, kagglecsv.CsvTruth):
            return inputs.read_csv_truth(path, self)
        if self.binary:
            return inputs.read_mask(path)
        if self.multilabel:
            if not path.is_dir():
                raise PipelineError(f"{path}: --multilabel reads a folder per image of masks <n>__<label>.png (labels "
                                    f"{', '.join(self.names)}); move this mask into {path.parent / path.stem}/")
            return inputs.read_label_instances(path, list(self.names))
        if path.is_dir():
            return inputs.read_class_instances(path, list(self.names))
        return inputs.read_labels(path, self.classes, self.colors)

    @staticmethod
    def truth_size(truth: NDArray) -> tuple[int, int]:
        """(H0, W0) of a truth: (H0, W0) bool or labels, or (C, H0, W0) bool (multi-label)."""
        return truth.shape[-2], truth.shape[-1]

    def truth_rle(self, truth: NDArray, order: str) -> str | None:
        """The RLE (in ``order``) that ``train_masks.csv`` lists for this truth: a binary mask's; None for labels,
        which no such file lists."""
        return rle.encode(truth, order) if self.binary else None

    def class_pixels(self, truth: NDArray) -> tuple[int, ...]:
        """Pixels of each class 0..C-1 in one image's labels, for 01's notes (``class_notes``); () for a binary
        mask, whose area says it all."""
        if self.binary:
            return ()
        if self.multilabel:
            return tuple(int(n) for n in np.count_nonzero(truth.reshape(self.classes, -1), axis=1))
        return tuple(int(c) for c in np.bincount(truth.ravel(), minlength=self.classes))

    def class_notes(self, pixels: Sequence[tuple[int, ...]]) -> list[str]:
        """01's notes on the training truth from each image's ``class_pixels``: each class's share of the pixels and
        the images holding it, and the classes in no mask (none for binary masks)."""
        if self.binary or not pixels:
            return []
        total = np.sum(pixels, axis=0)
        present = np.sum([np.array(c) > 0 for c in pixels], axis=0)
        what = "labels (share of the labelled pixels" if self.multilabel else "classes (share of pixels"
        notes = [f"{what}, images holding it): " + ", ".join(
            f"{name} {t / max(total.sum(), 1):.1%} {n}" for name, t, n in zip(self.names, total, present))]
        absent = [name for name, n in zip(self.names, present) if n == 0]
        if absent:
            notes.append(f"{'label' if self.multilabel else 'class'}(es) {', '.join(absent)} in no training mask: the "
                         "model cannot learn them")
        return notes

    def pack_truth(self, truth: NDArray) -> NDArray[np.uint8]:
        """(H0, W0) bool mask or uint8 labels -> packed bits: the mask's bits, or the labels' ``truth_bits`` bit
        planes one after another (bit 0 first)."""
        if self.binary or self.multilabel:  # (C, H0, W0) bool: its C planes already
            return np.packbits(truth.ravel())
        return np.packbits(np.stack([(truth >> b) & 1 for b in range(self.truth_bits)]).ravel())

    def unpack_truth(self, row: NDArray[np.uint8], size: tuple[int, int]) -> NDArray:
        """The inverse of ``pack_truth`` for an image of ``size`` (H0, W0)."""
        h0, w0 = size
        if self.binary:
            return np.unpackbits(row, count=h0 * w0).reshape(h0, w0).astype(bool)
        if self.multilabel:
            return np.unpackbits(row, count=self.classes * h0 * w0).reshape(self.classes, h0, w0).astype(bool)
        planes = np.unpackbits(row, count=self.truth_bits * h0 * w0).reshape(self.truth_bits, h0, w0)
        labels = np.zeros((h0, w0), np.uint8)
        for b in range(self.truth_bits):
            labels |= planes[b] << b
        return labels

    def net_target(self, truth: NDArray, height: int, width: int) -> NDArray[np.uint8]:
        """Full-size truth -> (height, width) uint8 at the network size: a soft mask 0..255 (the area fraction at
        edges), labels (nearest) or a multi-label truth's labels as bits (bit c: label c; nearest)."""
        if self.binary:
            return to_net(truth.astype(np.uint8) * 255, height, width, interpolation=cv2.INTER_AREA)
        if self.multilabel:
            bits = np.zeros(truth.shape[1:], np.uint8)
            for c in range(self.classes):
                bits |= truth[c].astype(np.uint8) << c
            return to_net(bits, height, width, interpolation=cv2.INTER_NEAREST)
        return to_net(truth, height, width, interpolation=cv2.INTER_NEAREST)

    def submission_rows(self, root: Path) -> tuple[list[str], list[str], list[tuple[str, int]]]:
        """The test set's submission rows under ``root``: (image ids in first-row order, row ids, (image id, class)
        of each row): ``inputs.test_rows`` (one row an image, class 1) or ``inputs.test_class_rows`` (a row per
        image and class 1..C-1)."""
        from lib import inputs
        if self.binary:
            ids, keys = inputs.test_rows(root)
            return ids, keys, [(i, 1) for i in ids]
        return inputs.test_class_rows(root, self)

    # --- training ---
    def loss(self, name: str, pixel_weight: float, region_weight: float):
        """The training loss ``name`` (``--loss``, lib/losses.py) in smp's binary or multiclass mode."""
        from lib.losses import BINARY, MULTICLASS, MULTILABEL, make_loss
        mode = MULTILABEL if self.multilabel else BINARY if self.binary else MULTICLASS
        return make_loss(name, mode, pixel_weight, region_weight)

    def target(self, masks):
        """A batch of network-size masks from the loader, (N, 1, H, W) uint8 -> what the loss takes:
        (N, 1, H, W) float in [0, 1] (binary, soft), (N, H, W) int64 labels or (N, C, H, W) float 0/1 (multi-label:
        bit c of each pixel)."""
        if self.multilabel:
            import torch
            bits = torch.arange(self.classes, device=masks.device).view(1, -1, 1, 1)
            return ((masks.long() >> bits) & 1).float()
        return masks.float() / 255 if self.binary else masks[:, 0].long()

    @property
    def mask_interpolation(self) -> int:
        """How network-size masks are resized and warped: soft (area, linear) for binary, nearest for labels."""
        return cv2.INTER_LINEAR if self.binary else cv2.INTER_NEAREST

    def probabilities(self, logits):
        """(N, channels, H, W) logits -> float32 probabilities of the same shape."""
        import torch
        logits = logits.float()
        return torch.sigmoid(logits) if self.binary or self.multilabel else torch.softmax(logits, dim=1)

    def to_maps(self, prob) -> NDArray[np.uint8]:
        """(N, channels, H, W) probabilities -> N maps as uint8 levels round(p * 255): (N, H, W) binary,
        (N, C * H, W) multi-class (the class maps stacked down, one PNG each). A NumPy ``prob`` (a stitched map of a
        large image) is quantized in place: no float copy of it is made."""
        if isinstance(prob, np.ndarray):
            u8 = np.rint(np.multiply(prob, 255, out=prob), out=prob).astype(np.uint8)
        else:
            import torch
            u8 = (prob * 255).round().to(torch.uint8).cpu().numpy()
        n, c, h, w = u8.shape
        return u8[:, 0] if self.binary else u8.reshape(n, c * h, w)

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of a stored map of a (height, width) image or network output."""
        return (height * self.channels, width)

    def split_map(self, m: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """A stored map (channels * H, W) -> (channels, H, W)."""
        c = self.channels
        if m.shape[0] % c:
            raise ValueError(f"a map of {m.shape[0]} rows does not hold {c} class maps")
        return m.reshape(c, m.shape[0] // c, m.shape[1])

    # --- decisions and scores ---
    def decide(self, maps: NDArray[np.uint8], level: int | Sequence[int], post: str = postprocess.NONE,
               min_area: float | Sequence[float] = 0.0) -> NDArray:
        """(channels, H, W) uint8 maps at the image's size -> (H, W) bool mask (binary: the map after
        post-processing ``post`` (lib/postprocess.py) above the uint8 ``level``, emptied when it covers less than
        ``min_area`` of the image: ``metrics.gate``), uint8 labels (the argmax, each class 1..C-1 under its
        ``min_area`` made background: ``gate_classes``; ``level`` and ``post`` are unused) or (C, H, W) bool
        (multi-label: each label's map above its ``level``, gated at its ``min_area``). ``min_area`` of the
        multi-class and multi-label tasks: one value for every scored class, or a sequence, one per scored class."""
        if self.multilabel:
            levels = np.broadcast_to(level, (self.classes,))
            areas = np.broadcast_to(min_area, (self.classes,))
            return np.stack([gate(m > lv, float(a)) for m, lv, a in zip(maps, levels, areas)])
        if self.binary:
            return gate(postprocess.apply(post, maps[0]) > level, min_area)
        return self.gate_classes(np.argmax(maps, axis=0).astype(np.uint8), min_area)

    def gate_classes(self, labels: NDArray[np.uint8], min_area: float | Sequence[float]) -> NDArray[np.uint8]:
        """Multi-class empty-mask gating: (H, W) uint8 labels with each scored class 1..C-1 that covers fewer than its
        ``min_area`` of the image (one fraction for all, or one per scored class) made background (0); the same
        array when none is. Each class is gated on its own area, so its Dice depends on its own minimum area only."""
        areas = np.broadcast_to(np.asarray(min_area, dtype=np.float64), (len(self.scored),))
        if not ((areas >= 0.0) & (areas < 1.0)).all():
            raise ValueError(f"min_area must be fractions of the image in [0, 1), got {areas.tolist()}")
        if not areas.any():
            return labels
        counts = np.bincount(labels.ravel(), minlength=self.classes)
        small = [c for c, a in zip(self.scored, areas) if 0 < counts[c] < a * labels.size]
        return np.where(np.isin(labels, small), np.uint8(0), labels) if small else labels

    def overlay(self, image: NDArray[np.uint8], decision: NDArray, truth: NDArray | None = None) -> NDArray[np.uint8]:
        """(H, W, 3) uint8 RGB photo with its ``decide``d mask tinted and outlined, or each class 1..C-1 of its labels
        tinted in the class's colour with a legend of the classes; the ``truth`` (same kind as the decision), when
        given, outlined (binary: in green, with a legend; labels: each class in its colour); a multi-label decision
        (C, H, W) has each label tinted (overlaps mix the tints) and its truth outlined in the label's colour."""
        from lib import plot
        if self.binary:
            picture = plot.overlay(image, decision)
            return picture if truth is None else plot.overlay_truth(picture, truth)
        if self.multilabel:
            return plot.overlay_multilabel(image, decision, self, truth)
        return plot.overlay_labels(image, decision, self, truth)

    def class_dices(self, pred: NDArray, truth: NDArray) -> NDArray[np.float64]:
        """Dice of each scored class of one image (1 where the class is in neither): (len(scored),).

        pred, truth: (H, W) bool masks (binary), uint8 labels 0..C-1 or (C, H, W) bool (multi-label)."""
        if pred.shape != truth.shape:
            raise ValueError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}")
        if self.multilabel:
            return np.array([dice(p, t) for p, t in zip(pred, truth)], dtype=np.float64)
        if self.binary:
            return np.array([dice(pred, truth)], dtype=np.float64)  # the same number, counted without a bincount
        return gated_dice_of_areas(self.class_areas(pred, truth), 0.0)

    def class_areas(self, pred: NDArray, truth: NDArray) -> NDArray[np.int64]:
        """(S, 4) ``metrics.AREA_STATS`` of each scored class of one image: its predicted area, the overlap with its
        truth, its truth area, the image's pixels (``metrics.gated_dice_of_areas`` scores them at any minimum area).

        pred, truth: (H, W) bool masks (binary), uint8 labels 0..C-1 (one bincount) or (C, H, W) bool."""
        if pred.shape != truth.shape:
            raise ValueError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}")
        if self.binary or self.multilabel:
            pairs = [(p.astype(bool), t.astype(bool)) for p, t in (zip(pred, truth) if self.multilabel
                                                                   else [(pred, truth)])]
            return np.array([[np.count_nonzero(p), np.count_nonzero(p & t), np.count_nonzero(t), p.size]
                             for p, t in pairs], dtype=np.int64)
        k = self.classes
        counts = np.bincount(pred.astype(np.int64).ravel() * k + truth.astype(np.int64).ravel(),
                             minlength=k * k).reshape(k, k)  # [pred class, true class]
        return np.array([[counts[c, :].sum(), counts[c, c], counts[:, c].sum(), pred.size] for c in self.scored],
                        dtype=np.int64)

    def score(self, pred: NDArray, truth: NDArray) -> float:
        """The image's score: Dice (binary), the mean Dice over the classes 1..C-1 or over the labels 0..C-1."""
        return float(self.class_dices(pred, truth).mean())

    def by_class(self, values: Sequence[float]) -> dict[str, float]:
        """{class name: value} of a figure per scored class (``values`` in ``scored`` order) for logs and tuning;
        {} for binary masks, whose one class's figure is the image score itself."""
        return {} if self.binary else {self.names[c]: float(v) for c, v in zip(self.scored, values)}

    # --- submissions ---
    def row_ids(self, key: str, image_id: str) -> list[str]:
        """The submission ids of one image: its key (binary: the file name, as Carvana's sample submission) or
        ``<image id>_<class name>`` for each class 1..C-1, or ``<key>_<label name>`` for every label (multi-label:
        Severstal's ``<file>_<ClassId>``, Clouds' ``<file>_<label>``)."""
        if self.multilabel:
            return [f"{key}_{name}" for name in self.names]
        return [key] if self.binary else [f"{image_id}_{self.names[c]}" for c in self.scored]

    def record(self) -> dict:
        """What a checkpoint, tuning or map folder stores about the task (``multilabel`` only when set: the other
        tasks' records are as before)."""
        return {"classes": self.classes, "names": list(self.names)} | ({"multilabel": True} if self.multilabel else {})

    def checkpoint_record(self) -> dict:
        """What a checkpoint stores: ``record()`` and, when --class-colors gave them, the class colours, so that
        every picture drawn from the models (03's overlays, ``--images``) uses them."""
        return self.record() | ({"colors": [list(c) for c in self.colors]} if self.colors else {})

    # --- what 03/04 ask the task ---
    @property
    def postprocessed(self) -> bool:
        """Whether decisions are post-processed: lib/postprocess.py works on binary maps; labels never are."""
        return self.binary

    def post_choices(self, asked: str) -> list[str]:
        """The post-processings for --postprocess ``asked``: every choice for auto, else the one asked; none for a task
        that is not post-processed. The first is the simplest, what applies where nothing was tuned."""
        from lib import postprocess
        if not self.postprocessed:
            return [postprocess.NONE]
        return list(postprocess.CHOICES) if asked == "auto" else [asked]

    def decide_maps(self, maps: Sequence[NDArray[np.uint8]], weights: Sequence[float], size: tuple[int, int],
                    threshold: float | Sequence[float], post: str, min_area: float | Sequence[float] = 0.0) -> NDArray:
        """The map -> mask decision of one image, for tuning, photos and submissions alike: stored network-size maps
        (one per prediction folder, each (channels * h_i, w_i) uint8) -> at the image's ``size`` (H0, W0) a bool mask
        (binary: brought to the size, blended, post-processed with ``post``, above ``threshold``, emptied below
        ``min_area`` of the image), uint8 labels (the argmax of the blended class maps, each class under its
        minimum area made background) or (C, H0, W0) bool (multi-label: each blended label map above its threshold,
        gated at its minimum area); one value for all or one per scored class."""
        from lib.ensemble import blended_maps, ensemble_labels, ensemble_mask
        if self.multilabel:
            levels = [level_of(t) for t in np.broadcast_to(threshold, (self.classes,))]
            return self.decide(blended_maps(maps, weights, size, self), levels, post, min_area)
        if self.binary:
            return ensemble_mask(maps, weights, size, threshold, post, min_area)
        return ensemble_labels(maps, weights, size, self, min_area)

    def pseudo_mask(self, maps: NDArray[np.uint8], post: str = postprocess.NONE) -> NDArray[np.uint8]:
        """Network-size maps (N, channels * H, W) of images without truth -> (N, H, W) uint8 training masks in the
        cache's form (``net_target``), each the decision at threshold 0.5 (binary after ``post``): 0/255, class labels
        or label bits. What lib/pseudo.py trains on."""
        level = level_of(0.5)
        out = np.empty((len(maps), maps.shape[1] // self.channels, maps.shape[2]), np.uint8)
        for i, m in enumerate(maps):
            d = self.decide(self.split_map(m), level, post)
            if self.multilabel:
                out[i] = sum((d[c].astype(np.uint8) << c for c in range(self.classes)), np.zeros(d.shape[1:], np.uint8))
            else:
                out[i] = d.astype(np.uint8) * 255 if self.binary else d
        return out

    def class_masks(self, decision: NDArray) -> list[NDArray[np.bool_]]:
        """``decide_maps``'s decision -> the bool mask of each scored class (a submission row each)."""
        if self.multilabel:
            return list(decision)
        return [decision] if self.binary else [decision == c for c in self.scored]

    def decision_of_rles(self, codes: dict[int, str], size: tuple[int, int], order: str) -> NDArray:
        """The decision a submission's rows of one image hold ({scored class: RLE}, a missing one empty) at ``size``
        (H0, W0): uint8 labels (multi-class) or (C, H0, W0) bool (multi-label); ValueError naming the class of a
        bad RLE."""
        def mask(c: int) -> NDArray[np.bool_]:
            try:
                return rle.decode(codes.get(c, ""), size, order)
            except ValueError as e:
                raise ValueError(f"class {self.names[c]}: {e}") from None
        if self.multilabel:
            return np.stack([mask(c) for c in self.scored])
        labels = np.zeros(size, np.uint8)
        for c in self.scored:
            labels[mask(c)] = c
        return labels

    def mask_pictures(self, image_rgb: NDArray[np.uint8], decision: NDArray) -> tuple[NDArray[np.uint8], NDArray]:
        """(the mask PNG's values: 0/255 for binary masks, each pixel's class for labels; the decision drawn over the
        (H, W, 3) RGB image) of one photo; a multi-label decision's PNG is its C label masks 0/255 stacked down
        (C * H, W), as its maps are."""
        if self.multilabel:
            return decision.reshape(-1, decision.shape[-1]).astype(np.uint8) * 255, self.overlay(image_rgb, decision)
        return (decision.astype(np.uint8) * 255 if self.binary else decision), self.overlay(image_rgb, decision)

    @property
    def uses_threshold(self) -> bool:
        """Whether a threshold decides a pixel (binary masks) or not (the argmax of the classes): tables and messages
        show a threshold only where one decides."""
        return self.binary or self.multilabel

    def decision_text(self, threshold: float | Sequence[float], post: str, min_area: float | Sequence[float] = 0.0
                      ) -> str:
        """How an image is decided, for messages: 'threshold 0.500[, largest region][, emptied under 0.10% of the
        image]', 'argmax over ...[, made background under: road 0.10%, ... of the image]' or 'per label: 1 threshold
        0.400 emptied under 0.10%, ...'."""
        if self.multilabel:
            pairs = zip(self.names, np.broadcast_to(threshold, (self.classes,)),
                        np.broadcast_to(min_area, (self.classes,)))
            return "per label: " + ", ".join(f"{name} threshold {t:.3f}" + (f" emptied under {a:.2%}" if a else "")
                                             for name, t, a in pairs)
        if self.binary:
            return (f"threshold {threshold:.3f}" + (", largest region" if post != "none" else "")
                    + (f", emptied under {min_area:.2%} of the image" if min_area else ""))
        gated = [f"{self.names[c]} {a:.2%}" for c, a in zip(self.scored, np.broadcast_to(min_area, len(self.scored)))
                 if a]
        return f"argmax over {self.describe()}" + (f", made background under: {', '.join(gated)} of the image"
                                                   if gated else "")

    def oof_stats(self, probs: Sequence[NDArray[np.uint8]], cache, rows: NDArray, posts: Sequence[str]
                  ) -> dict[str, NDArray]:
        """What tuning pools of one fold's out-of-fold maps, per post-processing in ``posts``: (N, 2, 256) Dice
        histograms (binary: every threshold in one pass), (N, S, 4) ``metrics.AREA_STATS`` of each class 1..C-1 of
        the ungated argmax (multi-class: every minimum area in one pass) or (N, C, 2, 256) histograms of each label
        (multi-label; not post-processed)."""
        from lib.oof import class_areas, label_histograms, oof_histograms
        if self.multilabel:
            return {post: label_histograms(probs, cache, rows, self) for post in posts}
        if self.binary:
            return oof_histograms(probs, cache, rows, posts)
        return {post: class_areas(probs, cache, rows, self) for post in posts}

    def pick(self, per_fold: list[NDArray], default_threshold: float, gating: bool = True
             ) -> tuple[float, float, list[float], dict]:
        """(threshold, pooled Dice, each fold's Dice at that threshold, what the score row adds) from the folds'
        ``oof_stats``: binary: the best threshold and minimum area (``metrics.best_threshold_and_min_area``), the Dice
        at ``default_threshold`` without gating (what an untuned run uses), the minimum area and the best Dice without
        gating (``gating`` False: minimum area 0, not searched); multi-class: the argmax (threshold 0.5) and each
        class's own best minimum area (``class_min_areas``: a class's Dice depends on its own gating only, so the best
        of each is the best of the mean), per class the minimum area and the Dice with and without gating;
        multi-label: each label's own best threshold and minimum area (``label_thresholds``; the image score is the
        labels' mean, so the best of each label is the best of all), the mean of the thresholds and, per label, the
        threshold, minimum area and Dice."""
        pooled = np.concatenate(per_fold)
        if self.multilabel:
            thresholds, min_areas, dices = self.label_thresholds(pooled, gating)
            return (float(np.mean(thresholds)), float(np.mean(dices)),
                    [float(self.label_dices(h, thresholds, min_areas).mean()) for h in per_fold],
                    {"thresholds": dict(zip(self.names, thresholds)), "min_areas": dict(zip(self.names, min_areas)),
                     "class_dice": dict(zip(self.names, dices))})
        if self.binary:
            from lib.metrics import (MIN_AREAS, best_threshold, best_threshold_and_min_area, gated_dice_by_level,
                                     level_of)
            ungated_threshold, ungated, ungated_per_level = best_threshold(pooled)
            threshold, min_area, dice, _ = best_threshold_and_min_area(pooled, MIN_AREAS if gating else (0.0,))
            level = level_of(threshold)
            return (threshold, dice, [float(gated_dice_by_level(h, min_area)[:, level].mean()) for h in per_fold],
                    {"dice_at_default": float(ungated_per_level[level_of(default_threshold)]), "min_area": min_area,
                     "dice_ungated": ungated})
        min_areas = self.class_min_areas(pooled, gating)[0]
        dices, ungated = self.area_dices(pooled, min_areas), self.area_dices(pooled, [0.0] * len(min_areas))
        return (0.5, float(dices.mean()), [float(self.area_dices(s, min_areas).mean()) for s in per_fold],
                {"class_dice": self.by_class(dices.mean(axis=0)), "min_areas": self.by_class(min_areas),
                 "class_dice_ungated": self.by_class(ungated.mean(axis=0))})  # (N, S) averaged as before gating

    def class_min_areas(self, stats: NDArray[np.int64], gating: bool = True
                        ) -> tuple[list[float], list[float], list[float]]:
        """(minimum area, mean Dice at it, mean Dice without gating) of each scored class, each class's best
        (``metrics.best_min_area`` over ``metrics.MIN_AREAS``; ``gating`` False: 0, not searched) from (N, S, 4)
        ``oof.class_areas`` counts, in one pass over them."""
        from lib.metrics import MIN_AREAS, best_min_area
        per_class = [stats[:, k] for k in range(stats.shape[1])]
        best = [best_min_area(s, MIN_AREAS if gating else (0.0,)) for s in per_class]
        return ([b[0] for b in best], [b[1] for b in best],
                [float(gated_dice_of_areas(s, 0.0).mean()) for s in per_class])  # as best_min_area scores 0

    def area_dices(self, stats: NDArray[np.int64], min_areas: Sequence[float]) -> NDArray[np.float64]:
        """(N, S) Dice of each scored class of each image gated at its ``min_areas`` (one per scored class) from
        (N, S, 4) ``oof.class_areas`` counts."""
        return np.stack([gated_dice_of_areas(stats[:, k], a) for k, a in enumerate(min_areas)], axis=1)

    def label_thresholds(self, hists: NDArray[np.int64], gating: bool = True
                         ) -> tuple[list[float], list[float], list[float]]:
        """(threshold, minimum area, mean Dice) of each label, each label's best
        (``metrics.best_threshold_and_min_area``; ``gating`` False: minimum area 0) from (N, C, 2, 256)
        ``oof.label_histograms``, in one pass over them."""
        from lib.metrics import MIN_AREAS, best_threshold_and_min_area
        best = [best_threshold_and_min_area(hists[:, c], MIN_AREAS if gating else (0.0,)) for c in range(self.classes)]
        return [b[0] for b in best], [b[1] for b in best], [b[2] for b in best]

    def label_dices(self, hists: NDArray[np.int64], thresholds: Sequence[float], min_areas: Sequence[float]
                    ) -> NDArray[np.float64]:
        """(N, C) Dice of each label of each image at its ``thresholds`` and ``min_areas`` from (N, C, 2, 256)
        ``oof.label_histograms``."""
        from lib.metrics import gated_dice_by_level, level_of
        return np.stack([gated_dice_by_level(hists[:, c], a)[:, level_of(t)]
                         for c, (t, a) in enumerate(zip(thresholds, min_areas))], axis=1)

    def score_baselines(self, cache, split) -> tuple[dict, object]:
        """The baselines scored out-of-fold ({name: baseline.Baseline}) and what their test submissions are made
        from: the average masks (binary) or the majority class of each pixel."""
        from lib import baseline
        if self.multilabel:
            raise PipelineError("no baselines for --multilabel (they are average masks or the majority class); "
                                "drop --baselines")
        if self.binary:
            return baseline.oof_baselines(cache, split)
        result, counts = baseline.oof_majority(cache, split, self)
        return {"majority": result}, counts

    def plan_baselines(self, run: Path, made, results: dict, ids: list[str], keys: list[str],
                       class_rows: list[tuple[str, int]], sizes: list[tuple[int, int]], rle_order: str) -> list:
        """The baselines' test submissions (``baseline.BaselinePlan``), every RLE made, nothing written."""
        from lib import baseline
        if self.binary:
            return [baseline.plan_baseline_submission(run, made, result, ids, sizes, keys, rle_order)
                    for result in results.values()]
        return [baseline.plan_majority_submission(run, made, results["majority"], self, keys, class_rows,
                                                  dict(zip(ids, sizes)), rle_order)]

    def score_submissions(self, paths: Sequence[Path], root: Path, keys: list[str],
                          class_rows: list[tuple[str, int]], mask_suffix: str, rle_order: str
                          ) -> dict[Path, tuple[float, dict[str, float]]]:
        """{path: (test Dice, {class name: its Dice} for a multi-class task)} of submissions against
        ``root/test_masks``."""
        from lib import scoring
        if self.binary:
            return {p: (d, {}) for p, d in scoring.score_submissions(paths, root, mask_suffix, rle_order).items()}
        return scoring.score_class_submissions(paths, root, self, dict(zip(keys, class_rows)), mask_suffix, rle_order)


BINARY = Task()


def read_class_colors(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and RGB colours from a CSV of ``name,r,g,b``, one row per class in class order (a header row of
    exactly ``name,r,g,b`` is allowed). PipelineError naming the file and row when it is malformed."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    except OSError as e:
        raise PipelineError(f"{path}: cannot read the class colours ({e.strerror or e})") from None
    if lines and lines[0].replace(" ", "").lower() == "name,r,g,b":
        lines = lines[1:]
    names, colors = [], []
    for i, line in enumerate(lines, 1):
        parts = [x.strip() for x in line.split(",")]
        try:
            if len(parts) != 4 or not parts[0]:
                raise ValueError
            rgb = tuple(int(x) for x in parts[1:])
            if not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except ValueError:
            raise PipelineError(f"{path}: row {i} {line!r} is not name,r,g,b with r, g, b in 0..255") from None
        names.append(parts[0])
        colors.append(rgb)
    if len(set(names)) != len(names) or len(set(colors)) != len(colors):
        raise PipelineError(f"{path}: class names and colours must be unique, one row per class")
    if len(names) < 2:
        raise PipelineError(f"{path}: needs at least 2 classes (the background first), has {len(names)}")
    return tuple(names), tuple(colors)  # type: ignore[return-value]

