"""Keeping each mask's largest region: the map operation, its out-of-fold tuning, and 03/04 applying it."""
import json
import shutil

import cv2
import numpy as np
import pytest

from conftest import TINY_FLAGS, run_script
from lib import files, rle, testmaps
from lib.geometry import from_net
from lib.metrics import binarize
from lib.postprocess import apply, largest_region
from lib.submission import read_submission
import params


def regions(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def test_largest_region_drops_other_blobs_and_keeps_the_soft_rim():
    m = np.zeros((200, 300), np.uint8)
    m[40:120, 40:200] = 250  # the car
    m[39, 40:200] = 110  # its soft rim, below 0.5: kept (within the margin)
    m[170:190, 250:290] = 200  # a separate blob (a dark floor strip painted as car)
    m[5:8, 5:8] = 90  # faint, far away, below 0.5: not a region, but outside the margin too
    out = largest_region(m)
    assert out[170:190, 250:290].max() == 0 and out[5:8, 5:8].max() == 0
    assert np.array_equal(out[30:130, 30:210], m[30:130, 30:210])
    assert regions(out > 127) == 1
    one = np.zeros((64, 96), np.uint8)
    one[10:30, 10:50] = 255
    assert largest_region(one) is one and apply("none", m) is m  # nothing to remove: the same array
    empty = np.zeros((64, 96), np.uint8)
    assert largest_region(empty) is empty
    with pytest.raises(ValueError, match="unknown post-processing"):
        apply("hull", m)


@pytest.fixture
def prepared(tiny_demo, tiny_prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_prepared, out)
    return tiny_demo, out


def test_tuned_out_of_fold_then_applied_by_04(prepared):
    root, out = prepared
    flags = ["--input", root, "--output", out, *TINY_FLAGS, "--epochs", "1"]
    run_script("02_train.py", "--fold", "all", *flags)
    run_script("03_predict.py", *flags)
    tuning = json.loads((files.run_dir(out, "demo") / files.TUNING).read_text())
    pooled = [s for s in tuning["scores"] if s["name"].endswith("out-of-fold")]
    modes = params.Params().tta_modes.split(",")  # what --tta auto tries
    assert {(s["tta"], s["postprocess"]) for s in pooled} == {(t, q) for t in modes for q in ("none", "largest")}
    best = max(pooled, key=lambda s: s["dice"])
    assert tuning["oof_dice"] == best["dice"] and tuning["postprocess"] == best["postprocess"]

    # a fixed choice is a new tuning (not the saved one), and 04 applies it to every mask
    forced = run_script("03_predict.py", *flags, "--postprocess", "largest")
    assert "tuning: reusing" not in forced.stdout and "post-processing largest" in forced.stdout
    tuning = json.loads((files.run_dir(out, "demo") / files.TUNING).read_text())
    assert tuning["postprocess"] == "largest" and {s["postprocess"] for s in tuning["scores"]} == {"largest"}
    sub = run_script("04_submit.py", *flags, "--postprocess", "largest")
    assert "keeping each mask's largest region" in sub.stdout
    path = next(files.run_dir(out, "demo").glob("submission*.csv.gz"))
    manifest = json.loads(next(files.run_dir(out, "demo").glob("submission*.json")).read_text())
    assert manifest["postprocess"] == "largest" and manifest["oof_dice"] == tuning["oof_dice"]
    size, threshold = tuple(tuning["orig_size"]), manifest["threshold"]
    codes = dict(read_submission(path))
    removed = 0
    for png in sorted((files.run_dir(out, "demo") / files.TEST_PROBS).glob("*.png")):
        full = from_net(testmaps.read_map(png), *size)
        mask = rle.decode(codes[png.stem], size)
        assert np.array_equal(mask, binarize(largest_region(full), threshold)), png.stem
        removed += regions(binarize(full, threshold)) - regions(mask)
    assert len(codes) > 0 and removed >= 0

    # 04 --postprocess none against a tuning that chose largest: written as asked, and not called scored
    run_script("04_submit.py", *flags, "--postprocess", "none")
    manifest = json.loads(next(files.run_dir(out, "demo").glob("submission*.json")).read_text())
    assert manifest["postprocess"] == "none" and manifest["oof_dice"] is None

    # a tuning.json naming an unknown post-processing: 04 refuses in one line naming 03, and 03 repairs it
    path = files.run_dir(out, "demo") / files.TUNING
    broken = json.loads(path.read_text())
    broken["postprocess"] = "hull"
    path.write_text(json.dumps(broken))
    before = sorted(p.name for p in files.run_dir(out, "demo").iterdir())
    refused = run_script("04_submit.py", *flags, check=False)
    assert refused.returncode == 1 and "'hull'" in refused.stderr and "03_predict.py" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.stderr
    assert sorted(p.name for p in files.run_dir(out, "demo").iterdir()) == before
    run_script("03_predict.py", *flags)
    run_script("04_submit.py", *flags)
    assert json.loads(path.read_text())["postprocess"] in ("none", "largest")
