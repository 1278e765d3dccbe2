"""Multi-class empty-mask gating: after the argmax, a class covering less than its own minimum area of the image is
made background. Each class's minimum area is tuned out-of-fold from per-image, per-class counts (one pass over the
maps), equals a brute-force search, is stored in tuning.json and applied by every decision (04, 03 --images,
export.json and deploy)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from lib import deploy, files, oof, photos, rle, tuning as tuning_mod
from lib.ensemble import ensemble_label_decision
from lib.errors import PipelineError
from lib.metrics import AREA_STATS, MIN_AREAS, best_min_area, gated_dice_of_areas
from lib.task import Task
from lib.testmaps import Prediction

TASK = Task(4, ("background", "road", "building", "water"))
H, W = 20, 24  # 480 pixels: the minimum areas 0.005 .. 0.05 are 2.4 .. 24 pixels


class _Cache:
    """What ``oof.class_areas`` reads of the cache: each row's image size and full-resolution truth labels."""

    def __init__(self, truths: np.ndarray):
        self.truths = truths

    def size_of(self, row: int) -> tuple[int, int]:
        return self.truths[row].shape

    def full_mask(self, row: int) -> np.ndarray:
        return self.truths[row]


def _scenes(n: int, present: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, C * H, W) uint8 stacked class maps and (n, H, W) uint8 truth labels: each class 1..3 is in an image's
    truth with probability ``present`` (a rectangle the model mostly finds), and the model paints stray confident
    pixels in half the images: of road 1..3, of building 1..10 (some below, some above the candidate minimum areas),
    of water none."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 60, (n, 4, H, W)).astype(np.uint8)
    maps[:, 0] += 60  # background wins where nothing else is painted
    truths = np.zeros((n, H, W), np.uint8)
    for i in range(n):
        for c in (1, 2, 3):
            if rng.random() < present:
                y, x = rng.integers(0, H - 8), 8 * (c - 1) + rng.integers(0, 3)  # each class in its own band
                truths[i, y:y + rng.integers(5, 9), x:x + rng.integers(5, 7)] = c
        for c, longest in ((1, 3), (2, 10), (3, 0)):
            inside = truths[i] == c
            maps[i, c][inside] = rng.integers(100, 256, int(inside.sum()))  # found, with a few misses below 120
            if longest and rng.random() < 0.5:
                y, x = rng.integers(0, H), rng.integers(0, W - 10)
                maps[i, c, y, x:x + rng.integers(1, longest + 1)] = 255  # a stray run of this class
    return maps.reshape(n, 4 * H, W), truths


def _stats(maps: np.ndarray, truths: np.ndarray) -> np.ndarray:
    return oof.class_areas(list(maps), _Cache(truths), np.arange(len(maps)), TASK)


def test_area_counts_score_as_the_decided_masks_do():
    maps, truths = _scenes(6, 0.5, seed=0)
    stats = _stats(maps, truths)
    assert stats.shape == (6, 3, len(AREA_STATS)) and stats.dtype == np.int64
    for i in range(6):
        labels = TASK.decide(TASK.split_map(maps[i]), 0)
        assert stats[i, :, 0].tolist() == [int((labels == c).sum()) for c in TASK.scored]
        assert stats[i, :, 3].tolist() == [H * W] * 3
        assert np.array_equal(gated_dice_of_areas(stats[i], 0.0), TASK.class_dices(labels, truths[i]))
    with pytest.raises(ValueError, match="min_area"):
        gated_dice_of_areas(stats, 1.0)
    with pytest.raises(ValueError, match="at least one|N >= 1"):
        best_min_area(stats[:0, 0])


def test_each_class_min_area_equals_a_brute_force_search():
    maps, truths = _scenes(12, 0.5, seed=3)
    stats = _stats(maps, truths)
    areas, dices, ungated = TASK.class_min_areas(stats)
    assert any(a > 0 for a in areas) and len(set(areas)) > 1  # each class tuned on its own, some gate
    for k, c in enumerate(TASK.scored):  # decide every image at every candidate of this class; the first best wins
        best = None
        for a in sorted(set(MIN_AREAS)):
            gating = [a if j == k else 0.0 for j in range(3)]
            d = np.mean([TASK.class_dices(TASK.decide(TASK.split_map(m), 0, min_area=gating), t)[k]
                         for m, t in zip(maps, truths)])
            if best is None or d > best[1]:
                best = (a, d)
        assert areas[k] == best[0] and dices[k] == pytest.approx(best[1]), TASK.names[c]
        assert ungated[k] == pytest.approx(np.mean([TASK.class_dices(TASK.decide(TASK.split_map(m), 0), t)[k]
                                                    for m, t in zip(maps, truths)]))
        assert dices[k] >= ungated[k]
    # the Task's pick: the mean of the classes' best, each fold's Dice of the decisions at those minimum areas
    threshold, pooled, per_fold, extra = TASK.pick([stats[:5], stats[5:]], 0.5)
    assert threshold == 0.5 and pooled == pytest.approx(np.mean(dices)) and pooled > np.mean(ungated)
    assert extra["min_areas"] == TASK.by_class(areas)
    assert extra["class_dice"] == pytest.approx(TASK.by_class(dices))
    assert extra["class_dice_ungated"] == pytest.approx(TASK.by_class(ungated))
    decided = [TASK.score(TASK.decide(TASK.split_map(m), 0, min_area=areas), t) for m, t in zip(maps, truths)]
    assert per_fold == pytest.approx([np.mean(decided[:5]), np.mean(decided[5:])])
    # --gating off: every minimum area 0, not searched: the argmax's Dice as before gating existed
    _, off, _, extra = TASK.pick([stats[:5], stats[5:]], 0.5, gating=False)
    assert set(extra["min_areas"].values()) == {0.0} and off == pytest.approx(np.mean(ungated))


def test_where_every_class_is_in_every_image_nothing_is_gated():
    maps, truths = _scenes(10, 1.1, seed=5)
    assert all(set(np.unique(t)) >= {1, 2, 3} for t in truths)
    stats = _stats(maps, truths)
    threshold, pooled, _, extra = TASK.pick([stats], 0.5)
    assert set(extra["min_areas"].values()) == {0.0}  # gating can only lose here: the first of equals, 0, stays
    assert extra["class_dice"] == extra["class_dice_ungated"]
    before = np.mean([TASK.score(TASK.decide(TASK.split_map(m), 0), t) for m, t in zip(maps, truths)])
    assert pooled == pytest.approx(before)


def test_a_decision_drops_a_small_stray_class_and_keeps_a_large_one():
    maps = np.zeros((4, H, W), np.uint8)
    maps[0] = 100
    maps[1, :10] = 200  # road: half the image
    maps[2, 15, 3:6] = 220  # building: 3 stray pixels (0.6%)
    maps[3, 18, :12] = 220  # water: 12 pixels (2.5%)
    areas = (0.01, 0.01, 0.02)
    labels = TASK.decide(maps, 0, min_area=areas)
    assert (labels == 1).sum() == 240 and not (labels == 2).any() and (labels == 3).sum() == 12
    assert (labels[15, 3:6] == 0).all()  # the stray class's pixels are background now
    ungated = TASK.decide(maps, 0)
    assert TASK.gate_classes(ungated, 0.0) is ungated and TASK.gate_classes(ungated, 0.001) is ungated
    assert (ungated == 2).sum() == 3
    # the ensemble decision at an image's size (04, photos, overlays) gates the same way
    stacked = maps.reshape(4 * H, W)
    assert np.array_equal(TASK.decide_maps([stacked, stacked], [0.5, 0.5], (H, W), 0.5, "none", areas), labels)
    text = TASK.decision_text(0.5, "none", areas)
    assert text.endswith("made background under: road 1.00%, building 1.00%, water 2.00% of the image")
    assert TASK.decision_text(0.5, "none") == "argmax over 4 classes (background, road, building, water)"
    with pytest.raises(ValueError, match="min_area"):
        TASK.gate_classes(ungated, [0.0, 1.0, 0.0])


def _tuning(areas: tuple[float, ...] = (0.0, 0.005, 0.0), **changes) -> tuning_mod.Tuning:
    row = {"name": "2-fold out-of-fold", "tta": "none", "postprocess": "none", "threshold": 0.5, "dice": 0.8,
           "class_dice": {"road": 0.9, "building": 0.7, "water": 0.8},
           "min_areas": dict(zip(TASK.names[1:], areas)),
           "class_dice_ungated": {"road": 0.9, "building": 0.6, "water": 0.8}}
    made = tuning_mod.Tuning("demo", [0, 1], "none", "none", 0.5, 0.8, (64, 96), (H, W), 8, "none", "auto", [],
                             TASK, [row], row["class_dice"], label_min_areas=areas)
    return made.replace(**changes)


def test_tuning_json_keeps_each_class_min_area_and_refuses_a_tuning_without_them(tmp_path):
    made = _tuning()
    tuning_mod.write(tmp_path, made)
    record = json.loads((tmp_path / files.TUNING).read_text())
    assert record["label_min_areas"] == [0.0, 0.005, 0.0] and "label_thresholds" not in record
    back = tuning_mod.read(tmp_path)
    assert back == made and back.decision_min_area == (0.0, 0.005, 0.0) and back.decision_threshold == 0.5
    table = tuning_mod.score_lines(back)
    assert table[0].rstrip().endswith("per class: min area, OOF Dice (without gating)")
    assert table[1].endswith("road: no gating, Dice 0.90000; building: 0.50% of the image (2 px), Dice 0.70000 "
                             "(0.60000); water: no gating, Dice 0.80000")
    for bad in ({k: v for k, v in record.items() if k != "label_min_areas"},  # made before multi-class gating
                record | {"label_min_areas": [0.0, 0.005]}, record | {"label_thresholds": [0.5, 0.5, 0.5]}):
        (tmp_path / files.TUNING).write_text(json.dumps(bad))
        with pytest.raises(PipelineError, match=r"tuning\.json: a multi-class tuning needs label_min_areas of its 3 "
                                                r"classes road, building, water .* tune again: `.*03_predict\.py"):
            tuning_mod.read(tmp_path)
    untuned = made.replace(tuned=False, label_min_areas=(), scores=[], class_dice={})  # a full model's defaults
    tuning_mod.write(tmp_path, untuned)
    assert tuning_mod.read(tmp_path).decision_min_area == 0.0


def test_the_ensemble_gates_each_class_where_the_folders_agree(tmp_path):
    one, two = (Prediction(tmp_path / name, 0.5, 1.0, _tuning()) for name in ("a", "b"))
    assert ensemble_label_decision([one, two]) == ((), (0.0, 0.005, 0.0))  # no thresholds: the argmax decides
    other = Prediction(tmp_path / "c", 0.5, 1.0, _tuning((0.01, 0.0, 0.0)))
    assert ensemble_label_decision([one, other]) == ((), (0.0, 0.0, 0.0))  # they disagree: no gating
    untuned = Prediction(tmp_path / "d", 1.0, 1.0, _tuning(tuned=False, label_min_areas=()))
    assert ensemble_label_decision([untuned]) == ((), (0.0, 0.0, 0.0))


def test_export_json_carries_each_class_min_area_to_deploys_masks(tmp_path):
    """export.json holds the list as multi-label's per-label lists are held; deploy's masks (lib/photos.py, the
    writer 03 --images shares) drop the small class."""
    from lib import export
    import params
    ens = SimpleNamespace(size=(H, W), task=TASK, fingerprints=[])
    areas = _tuning().decision_min_area
    record = json.loads(json.dumps(export.record(params.make_params(), ens, "none", 0.5, "none", "tuned", "x",
                                                 areas)))
    assert record["min_area"] == [0.0, 0.005, 0.0] and deploy.decision_value(record["min_area"]) == areas
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((H, W, 3), np.uint8))
    maps = np.zeros((4, H, W), np.uint8)
    maps[0], maps[1, :10], maps[2, 15, 3] = 100, 200, 220  # road large, one stray building pixel (0.2%)
    out = tmp_path / "out"
    out.mkdir()
    _, rows, why = photos.write_photo(0, photo, maps.reshape(4 * H, W), (H, W), deploy.decision_value(
        record["threshold"]), out, "row", TASK, "none", deploy.decision_value(record["min_area"]))
    assert not why and [k for k, _ in rows] == ["photo_road", "photo_building", "photo_water"]
    codes = dict(rows)
    assert rle.decode(codes["photo_road"], (H, W)).sum() == 240 and codes["photo_building"] == ""
    mask = cv2.imread(str(out / "photo_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask[15, 3] == 0 and (mask[:10] == 1).all()
