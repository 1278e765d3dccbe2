"""04_submit.py, lib/submission.py and lib/baseline.py on tiny fake stage outputs (CPU, seconds).

The fake data: 64 x 96 originals, 32 x 64 network maps. Training: 6 cars x 4 views whose masks are
boxes at a view-specific place (so per-view averages beat the global one), split into 3 folds by car.
Test: 2 cars x 4 views listed in sample_submission.csv in a non-sorted order, with truth GIFs; one
test image has no car and an all-zero map.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_script
from lib import baseline, cache as cache_mod, ensemble, files, fingerprint, inputs, rle, scoring, submission, \
    testmaps, tuning as tuning_mod
from lib.errors import PipelineError, listing
from lib.geometry import from_net
from lib.metrics import binarize, dice, level_of
from lib.task import BINARY

H0, W0 = 64, 96  # original size
NET = (32, 64)  # network size of the fake run
VIEWS = (1, 2, 3, 4)
TRAIN_CARS = [f"{c:012x}" for c in range(0xA0, 0xA6)]
TEST_CARS = [f"{c:012x}" for c in range(0xB0, 0xB2)]
EXPERIMENT = "demo"
EMPTY_ID = f"{TEST_CARS[1]}_03"  # a test image with no car and an all-zero predicted map


def box_mask(view: int, jitter: int) -> np.ndarray:
    """(H0, W0) bool: a box whose place depends on the view (and a little on the car)."""
    m = np.zeros((H0, W0), bool)
    top, left = 8 + 4 * view + jitter, 6 + 14 * (view - 1) + jitter
    m[top:top + 24, left:left + 40] = True
    return m


def write_gif(path: Path, mask: np.ndarray) -> None:
    """(H, W) bool -> palette GIF with values {0, 1}, like the Kaggle masks."""
    im = Image.fromarray(mask.astype(np.uint8), "P")
    im.putpalette([0, 0, 0, 255, 255, 255])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="GIF")


def write_jpg(path: Path, mask: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = (rng.integers(90, 110, (H0, W0, 3)) + 80 * mask[..., None]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def prob_map(mask: np.ndarray, size: tuple[int, int] = NET) -> np.ndarray:
    """A smooth uint8 map at network size that is high on the mask (soft edges, values across 0..255)."""
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)
    small = cv2.resize(soft, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.rint(small * 255).astype(np.uint8)


def view_of(image_id: str) -> int:
    """'00087a6bd4dc_01' -> 1."""
    return int(image_id.rsplit("_", 1)[1])


def tuning(size=NET, threshold=0.5, experiment=EXPERIMENT, orig=(H0, W0)) -> tuning_mod.Tuning:
    scores = ([{"name": f"fold {k} model", "tta": "hflip", "postprocess": "none", "threshold": threshold,
                "dice": 0.98 + k / 1000} for k in range(3)]
              + [{"name": "3-fold out-of-fold", "tta": "none", "postprocess": "none", "threshold": threshold,
                  "dice": 0.985},
                 {"name": "3-fold out-of-fold", "tta": "hflip", "postprocess": "none", "threshold": threshold,
                  "dice": 0.987654}])
    return tuning_mod.Tuning(experiment, [0, 1, 2], "hflip", "none", threshold, 0.987654, tuple(size), tuple(orig),
                             24, "auto", "auto", [], BINARY, scores)


def write_run(run: Path, ids: list[str], truths: dict[str, np.ndarray], size=NET, threshold=0.5,
              experiment=EXPERIMENT, seed=0, test_dir: Path | None = None) -> None:
    """A fake 03_predict.py output folder: tuning.json and test_probs/<id>.png at ``size`` (recording the
    fingerprint of ``test_dir/<id>.jpg`` when given, as 03 does)."""
    rng = np.random.default_rng(seed)
    for i in ids:
        prob = prob_map(truths[i], size)
        if i != EMPTY_ID:  # some noise so that two folders differ
            prob = np.clip(prob.astype(int) + rng.integers(-20, 21, prob.shape), 0, 255).astype(np.uint8)
        source = fingerprint.of_path(test_dir / f"{i}.jpg") if test_dir else None
        testmaps.write_map(run / files.TEST_PROBS / f"{i}.png", prob, (H0, W0), source)
    tuning_mod.write(run, tuning(size, threshold, experiment))
    testmaps.write_meta(run / files.TEST_PROBS, testmaps.MapsMeta.of(tuning(size, threshold, experiment)))


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> Path:
    """Fake project folder with input/ and output/ as stages 01-03 would leave them (read-only: copy to edit)."""
    from lib.oof import PngMaps, save_oof
    base = tmp_path_factory.mktemp("submit")
    root, out = base / "input", base / "output"
    rows = []
    for c, car in enumerate(TRAIN_CARS):
        for v in VIEWS:
            i = f"{car}_{v:02d}"
            m = box_mask(v, jitter=c % 3)
            write_jpg(root / files.TRAIN / f"{i}.jpg", m, seed=c * 10 + v)
            write_gif(root / files.TRAIN_MASKS / files.mask_name(i), m)
            rows.append((i, car, v, c // 2))
    test_ids = [f"{car}_{v:02d}" for car in TEST_CARS for v in VIEWS][::-1]  # not sorted: order must be kept
    truths = {i: box_mask(view_of(i), 1) for i in test_ids}
    truths[EMPTY_ID] = np.zeros((H0, W0), bool)
    for i in test_ids:
        write_gif(root / files.TEST_MASKS / files.mask_name(i), truths[i])
        write_jpg(root / files.TEST / f"{i}.jpg", truths[i], seed=1)
    pd.DataFrame({"img": [f"{i}.jpg" for i in test_ids], "rle_mask": "1 1"}).to_csv(
        root / files.SAMPLE_SUBMISSION, index=False)
    split = pd.DataFrame(rows, columns=["id", "car", "view", "fold"])
    files.write_text_atomic(files.folds_csv(out), split.to_csv(index=False))
    run = files.run_dir(out, EXPERIMENT)
    write_run(run, test_ids, truths, test_dir=root / files.TEST)
    for k in range(3):
        val = sorted(split.id[split.fold == k])
        save_oof(files.fold_dir(out, EXPERIMENT, k) / files.OOF, val,
                 PngMaps.encode(np.stack([prob_map(box_mask(view_of(i), 0)) for i in val])))
    cache_mod.open_cache(root, out, list(split.id), *NET, workers=1)  # build_cache from the JPEGs and GIFs
    return base


def copy_stage(stage: Path, tmp_path: Path) -> Path:
    shutil.copytree(stage, tmp_path / "p")
    return tmp_path / "p"


def sample_ids(base: Path) -> list[str]:
    return [files.image_id(i) for i in pd.read_csv(base / "input" / files.SAMPLE_SUBMISSION).img]


def read_rows(path: Path) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", newline="") as f:  # raises on a broken gzip stream
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "rle_mask"]
    return [(a, b) for a, b in rows[1:]]


def submit(base: Path, specs=None, workers: int = 2, threshold: float = 0.0, name: str = "submission") -> dict:
    run = files.run_dir(base / "output", EXPERIMENT)
    preds = testmaps.load_predictions(specs or [(run, 1.0)])
    path = submission.submission_path(run, name)
    return submission.make_submission(path, preds, sample_ids(base), base / "input" / files.SAMPLE_SUBMISSION,
                                      threshold, workers)


# --- the model submission ---
def test_rows_follow_sample_submission_and_decode_to_the_thresholded_upsampled_maps(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    manifest = submit(base)
    run = files.run_dir(base / "output", EXPERIMENT)
    path = run / "submission.csv.gz"
    rows = read_rows(path)
    ids = sample_ids(base)
    assert [img for img, _ in rows] == [f"{i}.jpg" for i in ids]
    for i, (_, code) in zip(ids, rows):
        prob = testmaps.read_map(run / files.TEST_PROBS / f"{i}.png")
        expected = binarize(from_net(prob, H0, W0), 0.5)
        assert np.array_equal(rle.decode(code, (H0, W0)), expected), i
    assert dict(rows)[f"{EMPTY_ID}.jpg"] == ""  # all-zero map: empty mask, empty string
    rle.validate("", (H0, W0))
    m = json.loads((run / "submission.manifest.json").read_text())
    assert m == manifest
    assert m["rows"] == len(ids) and m["submission"] == "submission.csv.gz"
    assert m["threshold"] == 0.5 and m["level"] == 127 and m["tta"] == "hflip" and m["oof_dice"] == 0.987654
    assert "tuned" in m["threshold_source"]
    assert m["inputs"] == [{"folder": str(run), "experiment": EXPERIMENT, "weight": 1.0, "weight_given": 1.0,
                            "tta": "hflip", "postprocess": "none", "threshold": 0.5, "oof_dice": 0.987654,
                            "size": list(NET), "min_area": 0.0}]
    assert m["sample_submission"].endswith(files.SAMPLE_SUBMISSION) and m["seconds"] > 0 and m["created"]
    assert m["sha256"] == submission.file_sha256(path)
    assert not list(run.glob(".*tmp*"))  # no temporary file left behind


def test_worker_processes_and_in_process_write_identical_files(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    submit(base, workers=2, name="a")
    submit(base, workers=0, name="b")
    run = files.run_dir(base / "output", EXPERIMENT)
    assert gzip.decompress((run / "a.csv.gz").read_bytes()) == gzip.decompress((run / "b.csv.gz").read_bytes())


def test_workers_start_clean_after_opencv_threads_ran_in_this_process(stage, tmp_path, monkeypatch):
    # A forked worker inherits a running OpenCV thread pool's locked state and can hang in cv2.resize.
    base = copy_stage(stage, tmp_path)
    cv2.setNumThreads(2)
    cv2.resize(np.zeros((1280, 1920), np.uint8), (960, 640), interpolation=cv2.INTER_LINEAR)
    assert submit(base, workers=2)["rows"] == 8


def test_fixed_threshold_is_used_and_said(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    m = submit(base, threshold=0.8, name="t80")
    assert m["threshold"] == 0.8 and m["threshold_source"] == "--threshold" and m["oof_dice"] is None
    run = files.run_dir(base / "output", EXPERIMENT)
    i, code = sample_ids(base)[0], read_rows(run / "t80.csv.gz")[0][1]
    prob = testmaps.read_map(run / files.TEST_PROBS / f"{i}.png")
    assert np.array_equal(rle.decode(code, (H0, W0)), from_net(prob, H0, W0) > level_of(0.8))


def test_missing_maps_are_listed_and_nothing_is_written(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    run = files.run_dir(base / "output", EXPERIMENT)
    earlier = run / "submission.csv.gz"
    earlier.write_bytes(b"an earlier submission")
    ids = sample_ids(base)
    for i in ids[2:5]:
        (run / files.TEST_PROBS / f"{i}.png").unlink()
    with pytest.raises(PipelineError) as e:
        submit(base)
    msg = str(e.value)
    assert "3 of 8 test maps missing" in msg and "03_predict.py" in msg and "\n" not in msg
    assert all(f"{i}.png" in msg for i in ids[2:5])
    assert earlier.read_bytes() == b"an earlier submission"  # left intact
    assert not (run / "submission.manifest.json").exists()
    assert not list(run.glob(".*tmp*"))


def _dying_encode_one(image_id, job):  # sent to the workers by name: module level
    if image_id == EMPTY_ID:
        os._exit(1)  # as the kernel's OOM killer would end it
    return submission.encode_one(image_id, job)


def test_a_killed_worker_stops_the_submission_instead_of_hanging(stage, tmp_path, monkeypatch):
    base = copy_stage(stage, tmp_path)
    monkeypatch.setattr(submission, "encode_one", _dying_encode_one)
    with pytest.raises(PipelineError, match="worker process died"):
        submit(base, workers=2)
    assert not (files.run_dir(base / "output", EXPERIMENT) / "submission.csv.gz").exists()


def test_missing_list_is_capped_at_ten():
    missing = [f"x{i}.png" for i in range(25)]
    text = listing(missing, testmaps.MAX_LISTED)
    assert "x9.png" in text and "x10.png" not in text and "and 15 more" in text


def test_unreadable_map_stops_the_submission_and_names_the_file(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    run = files.run_dir(base / "output", EXPERIMENT)
    bad = run / files.TEST_PROBS / f"{sample_ids(base)[-1]}.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(PipelineError, match=f"{bad.name}.*03_predict.py"):
        submit(base, workers=2)
    assert not (run / "submission.csv.gz").exists() and not list(run.glob(".*tmp*"))


def test_bad_rle_ids_mismatch_and_short_streams_are_refused(tmp_path):
    path = tmp_path / "s.csv.gz"
    path.write_bytes(b"old")
    ids = ["a_01", "a_02"]
    cases = [
        (ids, ["1 5", "3 2 4 1"], ids, "bad RLE for a_02"),  # runs touch/overlap
        (ids, ["1 5", "6140 10"], ids, "beyond"),  # outside the 64 x 96 image
        (ids, ["1 5", "1  5"], ids, "bad RLE for a_02"),  # malformed
        (ids, ["1 5"], ids, "only 1 masks"),
        (ids, ["1 5", "", "7 1"], ids, "more masks"),
        (ids[::-1], ["1 5", ""], ids, "row 1 is a_02"),  # order differs from sample_submission
        (ids[:1], ["1 5"], ids, "1 ids but"),
    ]
    for got_ids, codes, expected, why in cases:
        with pytest.raises(PipelineError, match=why):
            submission.write_submission(path, got_ids, iter(codes), (H0, W0), expected_ids=expected)
        assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv.gz"]
    assert submission.write_submission(path, ids, ["1 5", ""], (H0, W0), expected_ids=ids) == 2
    assert read_rows(path) == [("a_01.jpg", "1 5"), ("a_02.jpg", "")]


def test_ensemble_of_two_folders_is_the_weighted_average(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    ids = sample_ids(base)
    truths = {i: box_mask(view_of(i), 1) for i in ids}
    other = base / "output" / "other"
    write_run(other, ids, truths, size=(16, 32), threshold=0.3, experiment="other", seed=5,
              test_dir=base / "input" / files.TEST)
    run = files.run_dir(base / "output", EXPERIMENT)
    m = submit(base, specs=[(run, 3.0), (other, 1.0)], name="blend")
    assert [x["weight"] for x in m["inputs"]] == [0.75, 0.25]
    assert m["threshold"] == pytest.approx(0.75 * 0.5 + 0.25 * 0.3) and "weighted mean" in m["threshold_source"]
    assert m["oof_dice"] is None
    for i, (_, code) in zip(ids, read_rows(run / "blend.csv.gz")):
        a = from_net(testmaps.read_map(run / files.TEST_PROBS / f"{i}.png"), H0, W0).astype(np.float64)
        b = from_net(testmaps.read_map(other / files.TEST_PROBS / f"{i}.png"), H0, W0).astype(np.float64)
        avg = np.rint(0.75 * a + 0.25 * b).astype(np.uint8)
        assert np.array_equal(rle.decode(code, (H0, W0)), avg > level_of(m["threshold"])), i


def test_blend_rounds_the_weighted_average():
    a, b = np.array([[0, 10, 255]], np.uint8), np.array([[255, 13, 255]], np.uint8)
    assert ensemble.blend([a, b], [0.5, 0.5]).tolist() == [[128, 12, 255]]  # 127.5 -> 128, 11.5 -> 12
    assert ensemble.blend([a], [1.0]) is a


def test_folders_of_different_original_sizes_are_refused(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    other = base / "output" / "other"
    other.mkdir()
    tuning_mod.write(other, tuning(orig=(128, 192)))
    with pytest.raises(PipelineError, match="disagree on the original image size"):
        testmaps.load_predictions([(files.run_dir(base / "output", EXPERIMENT), 1.0), (other, 1.0)])


def test_pred_specs_and_broken_tuning(tmp_path):
    assert testmaps.parse_pred_spec("out/a:2") == (Path("out/a"), 2.0)
    assert testmaps.parse_pred_spec("out/a") == (Path("out/a"), 1.0)
    assert testmaps.parse_pred_spec("c:/x") == (Path("c:/x"), 1.0)
    with pytest.raises(PipelineError, match="positive"):
        testmaps.parse_pred_spec("out/a:0")
    (tmp_path / files.TUNING).write_text(json.dumps({**tuning().record(), "level": 3}))
    with pytest.raises(PipelineError, match="level 3 disagrees"):
        tuning_mod.read(tmp_path)
    with pytest.raises(PipelineError, match="03_predict.py"):
        tuning_mod.read(tmp_path / "nothing")


# --- scoring ---
def test_score_of_a_perfect_submission_is_one_and_dice_rules_hold(stage, tmp_path):
    root = stage / "input"
    ids = sample_ids(stage)
    truths = {i: inputs.read_mask(root / files.TEST_MASKS / files.mask_name(i)) for i in ids}
    path = tmp_path / "perfect.csv.gz"
    submission.write_submission(path, ids, (rle.encode(truths[i]) for i in ids), (H0, W0), ids)
    assert dict(read_rows(path))[f"{EMPTY_ID}.jpg"] == ""  # empty truth, empty prediction: Dice 1
    assert scoring.score_submission(path, root) == 1.0
    # all-empty predictions: 0 for every image with a car, 1 for the one without
    empty = tmp_path / "empty.csv.gz"
    submission.write_submission(empty, ids, ["" for _ in ids], (H0, W0), ids)
    assert scoring.score_submission(empty, root) == pytest.approx(1 / len(ids))
    # a shifted mask: the mean of the per-image Dice
    shifted = {i: np.roll(truths[i], 3, axis=1) for i in ids}
    moved = tmp_path / "moved.csv.gz"
    submission.write_submission(moved, ids, (rle.encode(shifted[i]) for i in ids), (H0, W0), ids)
    expected = np.mean([dice(shifted[i], truths[i]) for i in ids])
    assert scoring.score_submission(moved, root) == pytest.approx(expected)
    # several at once (each truth decoded once): the same scores
    together = scoring.score_submissions([path, empty, moved], root)
    assert together == pytest.approx({path: 1.0, empty: 1 / len(ids), moved: expected})


def test_score_names_missing_truth(stage, tmp_path):
    root = tmp_path / "input"
    shutil.copytree(stage / "input", root)
    ids = sample_ids(stage)
    (root / files.TEST_MASKS / files.mask_name(ids[0])).unlink()
    path = tmp_path / "s.csv.gz"
    submission.write_submission(path, ids, ["" for _ in ids], (H0, W0), ids)
    with pytest.raises(PipelineError, match=f"1 of 8 truth masks missing: {files.mask_name(ids[0])}"):
        scoring.score_submission(path, root)
    shutil.rmtree(root / files.TEST_MASKS)
    with pytest.raises(PipelineError, match="no test truth"):
        scoring.score_submission(path, root)


# --- baselines ---
class FakeCache:
    """The part of lib.cache.Cache the baselines use, over in-memory masks."""

    def __init__(self, masks: dict[str, np.ndarray]):
        self.ids = sorted(masks)
        self._masks = [masks[i] for i in self.ids]
        self.orig_size = self._masks[0].shape

    def full_mask(self, row: int) -> np.ndarray:
        return self._masks[row]

    def rows(self, ids):
        index = {k: i for i, k in enumerate(self.ids)}
        return np.array([index[k] for k in ids], dtype=np.int64)


def test_global_average_of_identical_masks_scores_one():
    mask = box_mask(2, 0)
    ids = [f"{c:012x}_{v:02d}" for c in range(4) for v in (1, 2)]
    split = pd.DataFrame({"id": ids, "car": [i[:12] for i in ids], "view": [view_of(i) for i in ids],
                          "fold": [int(i[11]) % 2 for i in ids]})
    results, total = baseline.oof_baselines(FakeCache({i: mask for i in ids}), split)
    assert results["global"].oof_dice == 1.0 and results["view"].oof_dice == 1.0
    assert np.array_equal(baseline.global_average(total), mask.astype(np.uint8) * 255)
    codes = baseline.baseline_rles(total, "global", results["global"].threshold)
    assert set(codes) == {1, 2} and rle.decode(codes[1], mask.shape).tolist() == mask.tolist()


def test_average_is_rounded_levels():
    assert baseline.average_u8(np.array([[0, 1, 2, 3]]), 3).tolist() == [[0, 85, 170, 255]]
    assert baseline.average_u8(np.array([[1]]), 2).tolist() == [[128]]  # 127.5 -> 128 (half to even)


def test_per_view_beats_global_when_views_differ(stage):
    out, root = stage / "output", stage / "input"
    split = pd.read_csv(files.folds_csv(out), dtype={"id": str, "car": str})
    cache = cache_mod.open_cache(root, out, list(split.id), *NET)
    results, total = baseline.oof_baselines(cache, split)
    assert results["view"].oof_dice > results["global"].oof_dice + 0.2
    assert results["view"].oof_dice > 0.9 and results["view"].n_images == len(split)
    assert total.views == VIEWS and total.counts.tolist() == [len(TRAIN_CARS)] * 4
    # the out-of-fold Dice of fold 0's images recomputed by hand with fold 1-2 masks
    thr = results["view"].threshold
    masks = {i: inputs.read_mask(root / files.TRAIN_MASKS / files.mask_name(i)) for i in split.id}
    scores = []
    for r in split.itertuples():
        others = [masks[j] for j in split.id[(split.fold != r.fold) & (split.view == r.view)]]
        avg = np.rint(np.mean(others, axis=0) * 255).astype(np.uint8)
        scores.append(dice(binarize(avg, thr), masks[r.id]))
    assert np.mean(scores) == pytest.approx(results["view"].oof_dice)


# --- the script ---
def test_cli_writes_submissions_and_prints_the_comparison(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    proc = run_script("04_submit.py", "--input", base / "input", "--output", base / "output",
                      "--experiment", EXPERIMENT, "--workers", "2", "--baselines", "--score")
    out = proc.stdout
    run = files.run_dir(base / "output", EXPERIMENT)
    for name in ("submission", "baseline_global", "baseline_view"):
        assert (run / f"{name}.csv.gz").exists() and (run / f"{name}.manifest.json").exists()
    assert "| system | TTA | threshold | OOF Dice | test Dice |" in out
    for row in ("average mask, global", "average mask, per view", "fold 2 model", "3-fold out-of-fold",
                "submission submission.csv.gz"):
        assert f"| {row} |" in out
    table = (run / files.COMPARISON).read_text()
    assert table in out
    test_col = {line.split(" | ")[0][2:]: line.split(" | ")[-1].rstrip(" |") for line in table.splitlines()
                if line.startswith("| ")}
    assert float(test_col["average mask, per view"]) > float(test_col["average mask, global"])
    assert float(test_col["submission submission.csv.gz"]) > 0.9
    assert [r[0] for r in read_rows(run / "baseline_view.csv.gz")] == [f"{i}.jpg" for i in sample_ids(base)]


def test_cli_without_tuning_fails_with_one_line_naming_03_predict(stage, tmp_path):
    base = copy_stage(stage, tmp_path)
    (files.run_dir(base / "output", EXPERIMENT) / files.TUNING).unlink()
    proc = run_script("04_submit.py", "--input", base / "input", "--output", base / "output",
                      "--experiment", EXPERIMENT, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tuning.json" in lines[0]
    assert "03_predict.py" in lines[0] and "Traceback" not in proc.stderr


# --- tables that explain themselves: 03's tuning lines and 04's comparison ---
def _tuning(task, scores: list[dict], class_dice: dict | None = None):
    from lib.tuning import Tuning
    best = scores[-1]
    return Tuning("demo", [0, 1], best["tta"], best["postprocess"], best["threshold"], best["dice"], (32, 64),
                  (160, 240), 64, "auto", "auto", [], task, scores, class_dice or {})


def _score(name: str, tta: str, dice: float, threshold: float = 0.5, post: str = "none", **extra) -> dict:
    return {"name": name, "tta": tta, "postprocess": post, "threshold": threshold, "dice": dice, **extra}


MULTI = __import__("lib.task", fromlist=["Task"]).Task(3, ("background", "road", "tree"))


def test_tuning_lines_have_a_header_and_a_threshold_only_where_one_decides():
    from lib.tuning import score_lines
    binary = score_lines(_tuning(BINARY, [_score("fold 0 model", "none", 0.9, 0.49, "largest")]))
    assert binary[0].split() == ["model", "TTA", "post-processing", "threshold", "OOF", "Dice"]
    assert binary[1].split() == ["fold", "0", "model", "none", "largest", "0.490", "0.90000"]
    assert binary[0].index("post-processing") == binary[1].index("largest")  # the column is labelled where it is
    classes = score_lines(_tuning(MULTI, [_score("fold 0 model", "hflip", 0.6)]))
    assert "threshold" not in classes[0] and "0.500 " not in classes[1]  # the argmax uses no threshold
    assert classes[0].split() == ["model", "TTA", "post-processing", "OOF", "Dice"]


def test_the_comparison_names_its_truth_folder_labels_class_columns_and_repeats_no_row(tmp_path):
    from lib.testmaps import Prediction
    per_class = {"road": 0.7, "tree": 0.5}
    scores = [_score("fold 0 model", "hflip", 0.6, class_dice=per_class),
              _score("1-fold out-of-fold", "hflip", 0.6, class_dice=per_class)]
    pred = Prediction(tmp_path, 1.0, 1.0, _tuning(MULTI, scores, per_class))
    manifest = {"submission": "submission.csv.gz", "tta": "hflip", "postprocess": "none", "threshold": 0.5,
                "oof_dice": 0.6}
    majority = baseline.Baseline("majority", 0.5, 0.3, 64, {"road": 0.2, "tree": 0.4})
    truth = Path("input/demo") / files.TEST_MASKS
    table = baseline.comparison_table({"majority": majority}, [pred], manifest, {"submission.csv.gz": 0.62},
                                      truth, {"submission.csv.gz": {"road": 0.71, "tree": 0.52}})
    lines = table.splitlines()
    assert "test on the masks in input/demo/test_masks" in lines[0]
    assert lines[2] == "| system | TTA | OOF Dice | test Dice | road OOF | tree OOF | road test | tree test |"
    assert "threshold" not in lines[2] and "| 0.500 |" not in table  # the argmax decides
    rows = [line.split(" | ")[1:] for line in lines[4:]]
    assert all(a != b for a, b in zip(rows, rows[1:])), table  # no row repeats the one above
    assert lines[5].startswith("| fold 0 model = 1-fold out-of-fold | hflip | 0.60000 |"), table
    assert lines[6] == "| submission submission.csv.gz | hflip | 0.60000 | 0.62000 | 0.70000 | 0.50000 | 0.71000 | " \
                       "0.52000 |", table
    # binary: the threshold column stays; an unscored submission row that repeats the best row joins it
    binary = Prediction(tmp_path, 1.0, 1.0, _tuning(BINARY, [_score("2-fold out-of-fold", "hflip", 0.9, 0.49)]))
    table = baseline.comparison_table({}, [binary], {**manifest, "threshold": 0.49, "oof_dice": 0.9})
    assert table.splitlines()[2] == "| system | TTA | threshold | OOF Dice |"
    assert table.splitlines()[4:] == ["| 2-fold out-of-fold = submission submission.csv.gz | hflip | 0.490 | 0.90000 |"]
