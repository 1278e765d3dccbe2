"""Empty-mask gating: a mask smaller than a minimum area is emptied; the area is tuned out-of-fold with the threshold
in the same one pass over the pixels (lib/metrics.py), stored in tuning.json and applied by 04 and 03 --images."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from demo.noisy import noisy_maps
from lib import files, metrics, rle, testmaps, tuning as tuning_mod
from lib.errors import PipelineError
from lib.geometry import from_net
from lib.metrics import (best_threshold, best_threshold_and_min_area, dice, dice_histograms, gate,
                         gated_dice_by_level, predicted_area_by_level)
from lib.postprocess import apply
from lib.task import BINARY

H, W = 48, 64


def _noisy_set(n: int, empty_share: float, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return noisy_maps(n, empty_share, H, W, seed)


def test_gate_empties_small_masks_only():
    mask = np.zeros((10, 10), bool)
    mask[0, :5] = True  # 5% of the image
    assert gate(mask, 0.0) is mask and gate(mask, 0.05) is mask  # at the minimum: kept
    assert not gate(mask, 0.06).any()
    with pytest.raises(ValueError, match="min_area"):
        gate(mask, 1.0)


def test_gated_histogram_scores_are_those_of_gated_masks():
    """The one-pass scores equal thresholding, gating and scoring each image itself."""
    probs, truths = _noisy_set(12, 0.5, seed=1)
    hists = np.stack([dice_histograms(p, t) for p, t in zip(probs, truths)])
    areas = predicted_area_by_level(hists)
    for min_area in (0.0, 0.002, 0.01):
        scores = gated_dice_by_level(hists, min_area)
        for level in (30, 127, 200):
            for i, (p, t) in enumerate(zip(probs, truths)):
                assert areas[i, level] == np.count_nonzero(p > level)
                assert scores[i, level] == pytest.approx(dice(gate(p > level, min_area), t)), (min_area, level, i)


def test_gating_raises_out_of_fold_dice_with_half_the_images_empty():
    probs, truths = _noisy_set(60, 0.5)
    hists = np.stack([dice_histograms(p, t) for p, t in zip(probs, truths)])
    _, ungated, _ = best_threshold(hists)
    threshold, min_area, gated, _ = best_threshold_and_min_area(hists)
    assert min_area > 0 and gated > ungated + 0.2, (ungated, gated, min_area)
    # the Task's pick reports both, and each fold's score at the gated choice
    t, d, per_fold, extra = BINARY.pick([hists[:30], hists[30:]], 0.5)
    assert (t, d) == (threshold, gated) and extra["min_area"] == min_area and extra["dice_ungated"] == ungated
    assert np.mean(per_fold) == pytest.approx(gated)
    # --gating off: minimum area 0, not searched: the best ungated threshold and Dice
    t, d, _, extra = BINARY.pick([hists[:30], hists[30:]], 0.5, gating=False)
    assert extra["min_area"] == 0.0 and d == ungated and d < gated


def test_without_empty_images_the_minimum_area_stays_zero():
    probs, truths = _noisy_set(30, 0.0)
    hists = np.stack([dice_histograms(p, t) for p, t in zip(probs, truths)])
    threshold, dice_, per_level = best_threshold(hists)
    assert best_threshold_and_min_area(hists)[:3] == (threshold, 0.0, dice_)  # the very choice of before
    with pytest.raises(ValueError, match="at least one image"):
        best_threshold_and_min_area(hists[:0])


def test_tuning_json_keeps_the_minimum_area_and_gating_and_refuses_files_without_them(tmp_path):
    from test_submission import tuning as make_tuning
    tuning = make_tuning().replace(min_area=0.002, gating_asked="off")
    tuning_mod.write(tmp_path, tuning)
    back = tuning_mod.read(tmp_path)
    assert (back.min_area, back.gating_asked) == (0.002, "off")
    record = json.loads((tmp_path / files.TUNING).read_text())
    for key in ("min_area", "gating_asked"):  # a tuning.json from before gating (or before --gating): tune again
        (tmp_path / files.TUNING).write_text(json.dumps({k: v for k, v in record.items() if k != key}))
        with pytest.raises(PipelineError, match=f"{key}.*tune again: .*03_predict.py"):
            tuning_mod.read(tmp_path)
    record["min_area"] = 1.5
    (tmp_path / files.TUNING).write_text(json.dumps(record))
    with pytest.raises(Exception, match="min_area 1.5 is not a fraction"):
        tuning_mod.read(tmp_path)


def test_a_run_without_empty_images_submits_the_ungated_masks(trained, tmp_path):
    """Every tiny-demo image holds a car: the tuned minimum area is 0 and 04's rows are exactly the masks without
    gating (what the pipeline submitted before gating existed)."""
    from conftest import run_script
    from test_failures import args_for, clone
    from lib.submission import read_submission
    out = clone(trained, tmp_path)
    run = files.run_dir(out, "demo")
    tuning = tuning_mod.read(run)
    assert tuning.min_area == 0.0
    pooled = [s for s in tuning.scores if s["name"].endswith("out-of-fold")]
    assert pooled and all(s["min_area"] == 0.0 and s["dice_ungated"] == s["dice"] for s in pooled)
    run_script("04_submit.py", *args_for(trained.root, out))
    manifest = json.loads(next(run.glob("submission*.manifest.json")).read_text())
    assert manifest["min_area"] == 0.0
    codes = dict(read_submission(next(run.glob("submission*.csv.gz"))))
    size = tuple(tuning.orig_size)
    for png in sorted((run / files.TEST_PROBS).glob("*.png")):
        ungated = metrics.binarize(apply(tuning.postprocess, from_net(testmaps.read_map(png), *size)),
                                   manifest["threshold"])
        assert np.array_equal(rle.decode(codes[png.stem], size), ungated), png.stem

    # a tuning that gates (as one made on a set with empty images would): 04 and 03 --images empty the small masks
    areas = {png.stem: np.count_nonzero(rle.decode(codes[png.stem], size))
             for png in (run / files.TEST_PROBS).glob("*.png")}
    cut = sorted(areas.values())[len(areas) // 2]  # about half the masks are smaller
    record = json.loads((run / files.TUNING).read_text())
    record["min_area"] = cut / (size[0] * size[1])
    files.write_text_atomic(run / files.TUNING, json.dumps(record))  # a new file: the clone's is a hard link of trained's
    sub = run_script("04_submit.py", *args_for(trained.root, out))
    assert "emptying masks under" in sub.stdout
    gated = dict(read_submission(next(run.glob("submission*.csv.gz"))))
    emptied = [i for i, a in areas.items() if a < cut]
    assert emptied and all(gated[i] == "" for i in emptied)
    assert all(gated[i] == codes[i] for i in areas if i not in emptied)
    photos = tmp_path / "photos"
    run_script("03_predict.py", *args_for(trained.root, out), "--images", trained.root / files.TEST,
               "--images-out", photos)
    photo_areas = [np.count_nonzero(rle.decode(code, size)) for _, code in read_submission(photos / "masks.csv")]
    assert len(photo_areas) == len(areas) and 0 in photo_areas and all(a == 0 or a >= cut for a in photo_areas)


def test_a_change_of_gating_tunes_again(tmp_path):
    """03 keeps a tuning.json only when it was made for the --gating asked now: auto's file is not off's."""
    from types import SimpleNamespace
    import params
    from lib import tta
    from lib.predict import current_tuning
    from test_submission import tuning as make_tuning
    p = params.make_params(output=str(tmp_path), experiment="demo")
    ens = SimpleNamespace(fingerprints=[{"digest": "fold0"}])
    run = files.run_dir(tmp_path, "demo")
    run.mkdir(parents=True)
    made = make_tuning().replace(tta_asked=tta.asked_text(p.tta, p.tta_modes), models=ens.fingerprints,
                                 experiment="demo")
    tuning_mod.write(run, made)
    assert current_tuning(p, ens) == made
    assert current_tuning(dataclasses.replace(p, gating="off"), ens) is None
    tuning_mod.write(run, made.replace(gating_asked="off", min_area=0.0))
    assert current_tuning(dataclasses.replace(p, gating="off"), ens).gating_asked == "off"
    assert current_tuning(p, ens) is None
