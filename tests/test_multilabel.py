"""Overlapping labels (--multilabel): instance folders with overlaps, the task's facts (record, truth storage, targets,
losses, decisions, per-label Dice, row ids) and per-label threshold and minimum-area tuning against brute force."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image
from segmentation_models_pytorch.losses import DiceLoss

from conftest import TINY_FLAGS, run_script
from lib import files, inputs, losses, rle, testmaps
from lib.errors import PipelineError
from lib.metrics import MIN_AREAS, dice_histograms, level_of, threshold_of
from lib.model import read_checkpoint
from lib.task import BINARY, Task
import params

TASK = Task(3, ("Fish", "Flower", "Gravel"), multilabel=True)


def write_masks(folder, masks: dict[str, np.ndarray]) -> None:
    folder.mkdir()
    for name, mask in masks.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{name}.png")


def test_instance_folders_keep_overlapping_labels(tmp_path):
    fish, flower = np.zeros((6, 8), bool), np.zeros((6, 8), bool)
    fish[1:4, 1:5], flower[2:6, 3:8] = True, True
    fish2 = np.zeros((6, 8), bool)
    fish2[5, 0] = True
    write_masks(tmp_path / "img1", {"a__Fish": fish, "b__Flower": flower, "c__Fish": fish2})
    truth = TASK.read_truth(tmp_path / "img1")
    assert truth.shape == (3, 6, 8) and truth.dtype == bool
    assert np.array_equal(truth[0], fish | fish2) and np.array_equal(truth[1], flower) and not truth[2].any()
    assert truth[0, 2, 3] and truth[1, 2, 3]  # the overlap holds both labels
    assert TASK.class_pixels(truth) == (int((fish | fish2).sum()), int(flower.sum()), 0)


def test_a_label_that_is_not_a_class_and_a_mask_file_are_refused(tmp_path):
    write_masks(tmp_path / "img1", {"a__Sugar": np.ones((4, 4), bool)})
    with pytest.raises(PipelineError, match=r"a__Sugar\.png: .* Fish, Flower, Gravel; rename it"):
        TASK.read_truth(tmp_path / "img1")
    (tmp_path / "img1" / "a__Sugar.png").rename(tmp_path / "img1" / "a__Gravel.png")  # the repair named
    assert TASK.read_truth(tmp_path / "img1")[2].all()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "img2.png")
    with pytest.raises(PipelineError, match=r"img2\.png: --multilabel reads a folder per image"):
        TASK.read_truth(tmp_path / "img2.png")


def test_the_task_is_made_from_settings_and_recorded():
    task = Task.of(params.make_params(classes=4, multilabel=True))
    assert task.names == ("1", "2", "3", "4")  # Severstal's ClassIds by default: no background label
    assert task.channels == 4 and task.scored == [0, 1, 2, 3] and task.truth_bits == 4
    assert not task.binary and task.uses_threshold and not task.postprocessed
    assert task.record() == {"classes": 4, "names": ["1", "2", "3", "4"], "multilabel": True}
    assert Task.from_record(task.record()) == task
    assert task != Task(4, task.names)  # a multi-class reader refuses a multi-label record: the tasks differ
    assert Task.of(params.make_params(classes=1, multilabel=True)) != BINARY  # one label is not the binary task
    assert "multilabel" not in Task(4).record() and "multilabel" not in BINARY.record()  # the others as before
    with pytest.raises(PipelineError, match="at most 8 labels"):
        Task(9, multilabel=True)


def test_truth_storage_targets_and_probabilities():
    rng = np.random.default_rng(0)
    truth = rng.random((3, 9, 13)) < 0.4
    packed = TASK.pack_truth(truth)
    assert packed.size == -(-3 * 9 * 13 // 8)
    assert np.array_equal(TASK.unpack_truth(packed, (9, 13)), truth)
    net = TASK.net_target(truth, 9, 13)  # the same size: nearest keeps every pixel
    assert net.shape == (9, 13) and net.dtype == np.uint8
    target = TASK.target(torch.from_numpy(net)[None, None])
    assert target.shape == (1, 3, 9, 13) and torch.equal(target[0].bool(), torch.from_numpy(truth))
    logits = torch.tensor([[[[0.0]], [[2.0]], [[-2.0]]]])
    assert torch.allclose(TASK.probabilities(logits).flatten(), torch.sigmoid(logits).flatten())  # not a softmax
    maps = TASK.to_maps(TASK.probabilities(torch.zeros(2, 3, 4, 5)))
    assert maps.shape == (2, 12, 5) and np.array_equal(TASK.split_map(maps[0]), np.full((3, 4, 5), 128, np.uint8))


@pytest.mark.parametrize("name", losses.CHOICES)
def test_every_loss_takes_multilabel_targets_in_smps_multilabel_mode(name):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = (torch.rand(2, 3, 8, 8) < 0.3).float()
    value = TASK.loss(name, 1.0, 1.0)(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and logits.grad.abs().sum() > 0
    if name == "bce_dice":
        expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + \
            DiceLoss(mode="multilabel", from_logits=True)(logits, target)
        assert torch.allclose(value, expected)


def test_decisions_gate_each_label_and_dice_is_averaged_over_labels():
    maps = np.zeros((3, 10, 10), np.uint8)
    maps[0, :5] = 200  # label 0: half the image at 200
    maps[1, 0, 0] = 250  # label 1: one pixel (1% of the image)
    maps[2, 5:] = 100  # label 2: half at 100
    decision = TASK.decide(maps, [level_of(0.5), level_of(0.5), level_of(0.3)], min_area=[0.0, 0.02, 0.0])
    assert decision.shape == (3, 10, 10)
    assert decision[0].sum() == 50 and not decision[1].any() and decision[2].sum() == 50  # label 1 gated away
    assert TASK.decide(maps, level_of(0.5))[1].sum() == 1 and not TASK.decide(maps, level_of(0.5))[2].any()
    truth = np.zeros((3, 10, 10), bool)
    truth[0, :5, :5] = True  # Dice 2 * 25 / (50 + 25)
    truth[2, 5:] = True  # Dice 1; label 1 empty in both: 1
    assert np.allclose(TASK.class_dices(decision, truth), [2 / 3, 1.0, 1.0])
    assert TASK.score(decision, truth) == pytest.approx((2 / 3 + 2) / 3)
    assert [m.sum() for m in TASK.class_masks(decision)] == [50, 0, 50]
    assert TASK.by_class([0.1, 0.2, 0.3]) == {"Fish": 0.1, "Flower": 0.2, "Gravel": 0.3}


def test_row_ids_are_the_file_name_and_each_label():
    assert TASK.row_ids("0011165.jpg", "0011165") == ["0011165.jpg_Fish", "0011165.jpg_Flower", "0011165.jpg_Gravel"]
    assert Task(4, multilabel=True).row_ids("a.jpg", "a") == ["a.jpg_1", "a.jpg_2", "a.jpg_3", "a.jpg_4"]


def test_per_label_threshold_and_min_area_equal_brute_force():
    rng = np.random.default_rng(3)
    n, h, w = 7, 12, 12
    truths = np.zeros((n, 3, h, w), bool)
    maps = np.stack([rng.integers(0, 40 + 50 * c, (n, h, w)) for c in range(3)], axis=1).astype(np.uint8)  # noise
    for i in range(n):
        for c in range(3):
            if rng.random() < 0.6:  # some images hold the label, the others are empty (gating pays there)
                y, x = rng.integers(0, 8, 2)
                truths[i, c, y:y + 4, x:x + 4] = True
                maps[i, c][truths[i, c]] = rng.integers(60 + 40 * c, 256, 16)
        maps[i, :2, rng.integers(0, h), rng.integers(0, w)] = 255  # a stray confident pixel in labels 0 and 1
    hists = np.stack([[dice_histograms(maps[i, c], truths[i, c]) for c in range(3)] for i in range(n)])
    thresholds, min_areas, dices = TASK.label_thresholds(hists)
    assert len(set(thresholds)) > 1 and len(set(min_areas)) > 1  # each label tuned on its own
    for c in range(3):  # brute force: decide and score every level and min area, ties as the search breaks them
        best = None
        for a in sorted(set(MIN_AREAS)):
            for level in range(1, 255):
                d = np.mean([TASK.class_dices(TASK.decide(maps[i], level, min_area=a), truths[i])[c]
                             for i in range(n)])
                if best is None or d > best[2] + 1e-12:
                    best = (threshold_of(level), a, d)
        assert (thresholds[c], min_areas[c]) == best[:2] and dices[c] == pytest.approx(best[2])
    threshold, pooled, folds, extra = TASK.pick([hists[:4], hists[4:]], 0.5)
    assert pooled == pytest.approx(np.mean(dices)) and extra["thresholds"] == dict(zip(TASK.names, thresholds))
    assert extra["min_areas"] == dict(zip(TASK.names, min_areas))
    decided = [TASK.score(TASK.decide(maps[i], [level_of(t) for t in thresholds], min_area=min_areas), truths[i])
               for i in range(n)]
    assert folds == pytest.approx([np.mean(decided[:4]), np.mean(decided[4:])])


def test_sample_submission_rows_name_the_file_and_the_label(tmp_path):
    (tmp_path / "test").mkdir()
    for i in ("a_1", "b.x"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "test" / f"{i}.png")
    ids, keys, pairs = inputs.test_class_rows(tmp_path, TASK)  # without a sample: every image, a row per label
    assert ids == ["a_1", "b.x"] and keys[:3] == ["a_1.png_Fish", "a_1.png_Flower", "a_1.png_Gravel"]
    assert pairs[3:] == [("b.x", 0), ("b.x", 1), ("b.x", 2)]
    (tmp_path / "sample_submission.csv").write_text("img,rle_mask\nb.x.png_Gravel,1 1\na_1.png_Fish,1 1\n")
    assert inputs.test_class_rows(tmp_path, TASK) == (["b.x", "a_1"], ["b.x.png_Gravel", "a_1.png_Fish"],
                                                      [("b.x", 2), ("a_1", 0)])
    (tmp_path / "sample_submission.csv").write_text("img,rle_mask\nb.x.png_Sugar,1 1\n")
    with pytest.raises(PipelineError, match=r"b\.x\.png_Sugar.* not <file name>_<label name>"):
        inputs.test_class_rows(tmp_path, TASK)


def test_the_decision_of_a_submissions_rows():
    mask = np.zeros((4, 5), bool)
    mask[1, 2:4] = True
    codes = {0: rle.encode(mask, "row"), 2: rle.encode(mask, "row")}
    decision = TASK.decision_of_rles(codes, (4, 5), "row")
    assert decision.shape == (3, 4, 5) and np.array_equal(decision[0], mask) and not decision[1].any()
    with pytest.raises(ValueError, match="class Flower"):
        TASK.decision_of_rles({1: "1 500"}, (4, 5), "row")


@pytest.mark.slow
def test_the_multilabel_demo_end_to_end(tmp_path):
    """01 -> 04 on a tiny multi-label demo: overlapping labels read, per-label thresholds and minimum areas tuned and
    applied, a row per test image and label in sample_submission.csv's order, the test score read back."""
    root, out = tmp_path / "input", tmp_path / "out"
    flags = [*TINY_FLAGS, "--classes", "3", "--multilabel", "--batch-size", "4", "--epochs", "1", "--tta", "none",
             "--input", str(root), "--output", str(out)]
    prep = run_script("01_prepare.py", "--demo", "--demo-kind", "multilabel", "--demo-train-cars", "8",
                      "--demo-test-cars", "2", "--demo-width", "96", "--demo-height", "64", *flags)
    assert "task: 3 overlapping labels (1, 2, 3)" in prep.stdout and "2 mask(s) are empty" in prep.stdout
    run_script("02_train.py", "--fold", "all", *flags)
    assert read_checkpoint(files.fold_dir(out, "demo", 0) / files.BEST)["task"] == {
        "classes": 3, "names": ["1", "2", "3"], "multilabel": True}
    predicted = run_script("03_predict.py", *flags)
    assert "per label: threshold, min area, OOF Dice" in predicted.stdout
    tuning = json.loads((files.run_dir(out, "demo") / files.TUNING).read_text())
    assert len(tuning["label_thresholds"]) == 3 and len(tuning["label_min_areas"]) == 3
    assert tuning["task"] == {"classes": 3, "names": ["1", "2", "3"], "multilabel": True}
    some_map = next((files.run_dir(out, "demo") / files.TEST_PROBS).glob("*.png"))
    assert testmaps.read_map(some_map).shape == (3 * 64, 96)  # the label maps stacked
    done = run_script("04_submit.py", "--score", *flags)
    assert "no baselines for --multilabel" in done.stdout and "test Dice of submission.csv.gz" in done.stdout
    with gzip.open(files.run_dir(out, "demo") / "submission.csv.gz", "rt") as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    sample = (root / "sample_submission.csv").read_text().splitlines()
    assert [r[0] for r in rows] == [line.split(",")[0] for line in sample] and rows[1][0] == "ml008.jpg_1"
    for row in rows[1:]:
        rle.validate(row[1], (64, 96))
    assert "| 1 OOF | 2 OOF | 3 OOF |" in (files.run_dir(out, "demo") / files.COMPARISON).read_text()
    tiled = [*flags, "--tile-size", "64"]  # sliding windows over the stacked label maps
    run_script("03_predict.py", "--replace", *tiled)
    assert json.loads((files.run_dir(out, "demo") / files.TUNING).read_text())["tiling"]
    assert "test Dice of submission.csv.gz" in run_script("04_submit.py", "--score", *tiled).stdout


@pytest.mark.slow
def test_a_mask_of_a_label_that_is_not_a_class_is_refused_until_renamed(tmp_path):
    root, out = tmp_path / "input", tmp_path / "out"
    flags = [*TINY_FLAGS, "--classes", "3", "--multilabel", "--input", str(root), "--output", str(out)]
    demo = ["--demo", "--demo-kind", "multilabel", "--demo-train-cars", "4", "--demo-test-cars", "0",
            "--demo-width", "64", "--demo-height", "32"]
    run_script("01_prepare.py", *demo, *flags)
    bad = root / "train_masks" / "ml000" / "0__1.png"
    bad.rename(bad.with_name("0__Fish.png"))
    failed = run_script("01_prepare.py", "--force", *flags, check=False)
    assert failed.returncode != 0 and f"{bad.with_name('0__Fish.png')}: an instance file" in failed.stderr
    assert "with a class of 1, 2, 3; rename it" in failed.stderr
    bad.with_name("0__Fish.png").rename(bad)  # the repair named
    assert run_script("01_prepare.py", "--force", *flags).returncode == 0


def test_tuning_json_keeps_each_labels_decision_and_refuses_a_tuning_without_them(tmp_path):
    from lib import tuning as tuning_mod
    row = {"name": "2-fold out-of-fold", "tta": "none", "postprocess": "none", "threshold": 0.5, "dice": 0.7,
           "thresholds": {"Fish": 0.4, "Flower": 0.5, "Gravel": 0.6}, "min_areas": {"Fish": 0.0, "Flower": 0.001,
                                                                                    "Gravel": 0.0},
           "class_dice": {"Fish": 0.6, "Flower": 0.7, "Gravel": 0.8}}
    made = tuning_mod.Tuning("demo", [0, 1], "none", "none", 0.5, 0.7, (64, 96), (64, 96), 8, "none", "auto", [],
                             TASK, [row], row["class_dice"], label_thresholds=(0.4, 0.5, 0.6),
                             label_min_areas=(0.0, 0.001, 0.0))
    tuning_mod.write(tmp_path, made)
    back = tuning_mod.read(tmp_path)
    assert back == made and back.decision_threshold == (0.4, 0.5, 0.6) and back.decision_min_area == (0.0, 0.001, 0.0)
    table = "\n".join(tuning_mod.score_lines(back))
    assert "per label: threshold, min area, OOF Dice" in table
    assert "Fish: 0.400, no gating, Dice 0.60000; Flower: 0.500, 0.10% of the image (6 px), Dice 0.70000" in table
    binary = made.replace(task=BINARY, label_thresholds=(), label_min_areas=(), scores=[], class_dice={})
    assert "label_thresholds" not in binary.record() and binary.decision_threshold == 0.5  # the others as before
    text = (tmp_path / files.TUNING).read_text().replace('"label_thresholds"', '"other"')
    (tmp_path / files.TUNING).write_text(text)
    with pytest.raises(PipelineError, match=r"tuning\.json: a multi-label tuning needs label_thresholds .* tune "
                                            r"again: `.*03_predict\.py"):
        tuning_mod.read(tmp_path)
