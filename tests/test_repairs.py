"""Stale files and repairs (docs/RELIABILITY.md): no silently wrong result, advice that
repairs, a refused run that writes nothing, one line for every damaged stage file.

Every refusal is checked the same way: one line naming the file, the exact command that repairs the state, no
file changed; then that command is run as named, and the command that was refused succeeds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from lib import cache as cache_mod, files, inputs, rle, submission, testmaps
from lib.errors import PipelineError
from lib.model import read_checkpoint
from lib.oof import load_oof
from test_failures import EXPERIMENT, FLAGS, clone, digest, error_line, replace_file, strict_error  # noqa: F401


ORIG = (160, 240)  # (H, W) of the tiny demo's images


def args_for(t, out: Path) -> list:
    return ["--input", t.root, "--output", out, *FLAGS]


def advised(line: str, script: str) -> list[str]:
    """The arguments of the repair command a message names in backticks (`` `.venv/bin/python <script> --x ...` ``),
    after the script's name."""
    import shlex
    commands = [shlex.split(c) for c in line.split("`")[1::2]]
    found = [c for c in commands if len(c) > 1 and Path(c[1]).name == script]
    assert found, line
    return found[0][2:]


def own_input(t, tmp_path: Path) -> Path:
    root = tmp_path / "in put"
    shutil.copytree(t.root, root)
    return root


# --- 1. a re-split is never mixed with models trained on the old one ---
def test_resume_and_prediction_after_a_resplit_are_refused_and_restart_repairs(trained, tmp_path):
    out = clone(trained, tmp_path)
    run = files.run_dir(out, EXPERIMENT)
    old = (out / "folds.csv").read_bytes()
    for seed in range(7, 30):  # 4 cars in 2 folds: some seeds give the same split
        run_script("01_prepare.py", *args_for(trained, out), "--seed", str(seed), "--force")
        if (out / "folds.csv").read_bytes() != old:
            break
    assert (out / "folds.csv").read_bytes() != old
    before = digest(run)
    line = error_line(run_script("02_train.py", "--fold", "0", *args_for(trained, out), "--resume", check=False))
    assert "trained on another split" in line and "--restart" in line
    line = error_line(run_script("03_predict.py", *args_for(trained, out), check=False))
    assert f"{run}: fold(s) 0,1 trained on another split" in line and "--folds" not in line
    assert digest(run) == before  # refused: nothing changed
    run_printed(printed(line, "02_train.py"))  # both folds again (--fold all --restart), then the maps they make
    run_printed(printed(line, "03_predict.py"))
    new = read_checkpoint(run / "fold0" / files.BEST)
    assert load_oof(run / "fold0" / files.OOF).split == new["split"]


def printed(line: str, script: str) -> list[str]:
    """The command a message names for ``script``, whole: interpreter, script path and every argument, as printed."""
    import shlex
    commands = [shlex.split(c) for c in line.split("`")[1::2]]
    found = [c for c in commands if len(c) > 1 and Path(c[1]).name == script]
    assert found, line
    return found[-1]


def run_printed(words: list[str], check: bool = True):
    """Run a printed command exactly as it reads (its interpreter is this one, its script one of the stages)."""
    import os
    import sys
    assert os.path.realpath(words[0]) == os.path.realpath(sys.executable), words
    return run_script(words[1], *words[2:], check=check)


def test_advice_after_a_resplit_names_only_folds_that_fit_and_runs_as_printed(trained, tmp_path):
    # the issue: after a re-split, 03 said "--folds 0,1" and then refused those very folds (trained on the old split)
    out = clone(trained, tmp_path, with_maps=False)
    args = args_for(trained, out)
    run_script("01_prepare.py", *args, "--n-folds", "3", "--force")  # 3 folds now: 0 and 1 stale, 2 missing
    line = error_line(run_script("03_predict.py", *args, "--n-folds", "3", check=False))
    assert "no model for fold(s) 2" in line and "fold(s) 0,1 trained on another split" in line, line
    assert "--folds" not in line, line  # no fold fits the split: nothing to ensemble
    assert printed(line, "02_train.py")[2:4] == ["--fold", "all"] and "--restart" in printed(line, "02_train.py")
    run_script("02_train.py", *args, "--n-folds", "3", "--fold", "0", "--restart")  # one fold of the new split
    line = error_line(run_script("03_predict.py", *args, "--n-folds", "3", check=False))
    assert "no model for fold(s) 2" in line and "fold(s) 1 trained on another split" in line, line
    words = printed(line, "03_predict.py")
    assert words[words.index("--folds") + 1] == "0", line  # the one fold that fits
    outside = error_line(run_script("03_predict.py", *args, "--n-folds", "3", "--folds", "1,4", check=False))
    assert "--folds 4: the split" in outside and printed(outside, "03_predict.py") == words, outside
    proc = run_printed(words)  # exactly as printed: it tunes on fold 0 and predicts the test maps
    assert "fold 0" in proc.stdout or "1-fold" in proc.stdout, proc.stdout
    assert list((files.run_dir(out, EXPERIMENT) / files.TEST_PROBS).glob("*.png"))


def test_photos_with_a_fold_that_has_no_model_name_the_folds_that_do_and_that_command_runs(trained, tmp_path):
    photo = sorted((trained.root / files.TEST).iterdir())[0]
    line = error_line(run_script("03_predict.py", *args_for(trained, trained.out), "--images", photo, "--images-out",
                                 tmp_path / "masks", "--folds", "0,5", check=False))
    assert "no model.pt for fold(s) 5" in line, line
    words = printed(line, "03_predict.py")
    assert words[words.index("--folds") + 1] == "0" and words.count("--folds") == 1, line
    run_printed(words)
    assert (tmp_path / "masks" / f"{photo.stem}_mask.png").exists()


# --- 2. a replaced model.pt is tuned on its own out-of-fold maps ---
def test_a_replaced_model_is_tuned_on_maps_it_predicts_not_on_the_old_oof_file(trained, tmp_path):
    out = clone(trained, tmp_path)
    other = [*args_for(trained, out), "--experiment", "other", "--seed", "5"]
    run_script("02_train.py", "--fold", "1", *other)  # same split, other weights
    run_script("03_predict.py", *other, "--folds", "1")
    expected = json.loads((files.run_dir(out, "other") / files.TUNING).read_text())["scores"][0]
    fold1 = files.fold_dir(out, EXPERIMENT, 1)
    (fold1 / files.BEST).unlink()
    shutil.copy(files.fold_dir(out, "other", 1) / files.BEST, fold1 / files.BEST)  # the old oof.npz stays
    proc = run_script("03_predict.py", *args_for(trained, out), "--folds", "1", "--replace")
    assert "was not made by fold 1's model.pt" in proc.stdout
    got = json.loads((files.run_dir(out, EXPERIMENT) / files.TUNING).read_text())["scores"][0]
    assert got["name"] == expected["name"] == "fold 1 model" and got["dice"] == pytest.approx(expected["dice"])


# --- 3. maps that say nothing of what made them ---
def test_submit_refuses_maps_without_meta_and_replace_repairs(trained, tmp_path):
    out = clone(trained, tmp_path)
    probs = files.run_dir(out, EXPERIMENT) / files.TEST_PROBS
    (probs / files.PROBS_META).unlink()
    for i in trained.ids:  # every map 200: a submission of empty rows if trusted
        path = probs / f"{i}.png"
        path.unlink()
        testmaps.write_map(path, np.full((32, 64), 200, np.uint8), ORIG)
    line = strict_error(run_script("04_submit.py", *args_for(trained, out), check=False))
    assert f"{probs}: no meta.json" in line and "03_predict.py --replace" in line
    assert not (files.run_dir(out, EXPERIMENT) / "submission.csv.gz").exists()
    run_script("03_predict.py", *args_for(trained, out), "--replace")
    run_script("04_submit.py", *args_for(trained, out))


# --- 4. a test image of another size: its own size, in the map and in the submission ---
def test_a_test_image_of_another_size_gets_a_mask_of_its_own_size(trained, tmp_path):
    root = own_input(trained, tmp_path)
    out = clone(trained, tmp_path)
    args = ["--input", root, "--output", out, *FLAGS]
    odd = trained.ids[3]
    image = root / files.TEST / f"{odd}.jpg"
    Image.open(image).resize((640, 448)).save(image, quality=95)
    probs = files.run_dir(out, EXPERIMENT) / files.TEST_PROBS
    # its map still made from the old image: 04 refuses, and a plain 03 re-run repairs
    line = error_line(run_script("04_submit.py", *args, check=False))
    assert f"{image}: is 640x448 but its map was made from a 240x160 image" in line and "03_predict.py" in line
    proc = run_script("03_predict.py", *args)
    assert f"{len(trained.ids) - 1} of {len(trained.ids)} maps already done" in proc.stdout
    assert testmaps.header(probs / f"{odd}.png")[:2] == ((32, 64), (448, 640))
    run_script("04_submit.py", *args)
    rows = dict(submission.read_submission(files.run_dir(out, EXPERIMENT) / "submission.csv.gz"))
    assert rle.decode(rows[odd], (448, 640)).shape == (448, 640)
    rle.validate(rows[odd], (448, 640))
    rle.validate(rows[trained.ids[0]], ORIG)


# --- 5. EXIF orientation ---
def test_exif_orientation_is_ignored_like_the_mask_and_the_header_size(tmp_path):
    yy, xx = np.mgrid[0:64, 0:96]
    pixels = np.stack([xx * 2, yy * 3, (xx + yy)], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it closely
    path = tmp_path / "car_01.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(pixels).save(path, exif=exif, quality=100)
    image, orig = cache_mod.load_net_image(path, 64, 96)
    assert orig == (64, 96) == image.shape[:2] == inputs.check_image(path)
    assert np.abs(image.astype(int) - pixels).mean() < 3  # stored orientation, not rotated


# --- 6 and 7. one writer; a fold whose last.pt is gone ---
def test_a_fold_without_last_pt_is_neither_overwritten_nor_resumed_and_restart_repairs(trained, tmp_path):
    out = clone(trained, tmp_path)
    fold = files.fold_dir(out, EXPERIMENT, 0)
    (fold / files.LAST).unlink()
    before = digest(fold)
    line = strict_error(run_script("02_train.py", "--fold", "0", *args_for(trained, out), check=False))
    assert "a run exists (model.pt, oof.npz)" in line and "--restart" in line
    line = strict_error(run_script("02_train.py", "--fold", "0", *args_for(trained, out), "--resume", check=False))
    assert "last.pt is missing" in line
    assert digest(fold) == before
    run_script("02_train.py", *args_for(trained, out), *advised(line, "02_train.py"))
    assert read_checkpoint(fold / files.LAST)["epoch"] == 1


# --- 9. advice that repairs ---
def test_a_corrupt_model_names_the_command_that_repairs_it(trained, tmp_path):
    out = clone(trained, tmp_path)
    best = files.fold_dir(out, EXPERIMENT, 1) / files.BEST
    replace_file(best, best.read_bytes()[:1000])
    line = strict_error(run_script("03_predict.py", *args_for(trained, out), check=False))
    assert f"{best}: corrupt or not a checkpoint" in line
    run_script("02_train.py", *args_for(trained, out), *advised(line, "02_train.py"))
    run_script("03_predict.py", *args_for(trained, out), "--replace")
    run_script("04_submit.py", *args_for(trained, out))


@pytest.mark.parametrize("damage", ["empty", "other size", "not a png"])
def test_a_damaged_map_is_predicted_again_by_the_advised_re_run(trained, tmp_path, damage):
    out = clone(trained, tmp_path)
    path = files.run_dir(out, EXPERIMENT) / files.TEST_PROBS / f"{trained.ids[2]}.png"
    data = {"empty": b"", "not a png": b"GIF89a....",
            "other size": None}[damage]
    path.unlink()
    if data is None:
        testmaps.write_map(path, np.zeros((16, 16), np.uint8), ORIG)
    else:
        path.write_bytes(data)
    line = error_line(run_script("04_submit.py", *args_for(trained, out), check=False))
    assert str(path) in line and "03_predict.py" in line
    proc = run_script("03_predict.py", *args_for(trained, out))
    assert "1 to predict" in proc.stdout
    assert path.read_bytes() == (trained.reference / path.name).read_bytes()
    run_script("04_submit.py", *args_for(trained, out))


@pytest.mark.parametrize("threshold", [1.5, float("nan"), "0.5", None])
def test_a_damaged_tuning_is_refused_by_04_set_aside_by_images_and_made_again_by_03(trained, tmp_path, threshold):
    out = clone(trained, tmp_path)
    path = files.run_dir(out, EXPERIMENT) / files.TUNING
    tuning = json.loads(path.read_text())
    tuning["threshold"] = threshold
    replace_file(path, json.dumps(tuning).encode())
    line = strict_error(run_script("04_submit.py", *args_for(trained, out), check=False))
    assert str(path) in line and "03_predict.py" in line
    image = trained.root / files.TEST / f"{trained.ids[0]}.jpg"
    photos = run_script("03_predict.py", *args_for(trained, out), "--images", image, "--images-out", tmp_path / "m")
    assert "TTA none, threshold 0.500 (unusable tuning.json" in photos.stdout  # --tta none in FLAGS
    proc = run_script("03_predict.py", *args_for(trained, out))
    assert "tuning again" in proc.stdout
    run_script("04_submit.py", *args_for(trained, out))
    photos = run_script("03_predict.py", *args_for(trained, out), "--images", image, "--images-out", tmp_path / "m")
    assert "(tuned)" in photos.stdout


# --- 10. a refused run writes nothing ---
def test_refused_runs_change_no_file(trained, tmp_path):
    out = clone(trained, tmp_path)
    run = files.run_dir(out, EXPERIMENT)
    before = digest(out)
    refused = [
        ("02_train.py", ["--fold", "0", "--resume", "--lr", "0.5"]),  # changed settings
        ("02_train.py", ["--fold", "0", "--restart", "--resume"]),
        ("03_predict.py", ["--folds", "7"]),
        ("04_submit.py", ["--preds", str(tmp_path / "nowhere")]),
    ]
    for script, extra in refused:
        proc = run_script(script, *args_for(trained, out), *extra, check=False)
        error_line(proc)
        assert digest(out) == before, f"{script} {extra} changed files"
    # a test id missing from test/: 03 refuses before tuning or writing params
    root = own_input(trained, tmp_path)
    (root / files.TEST / f"{trained.ids[0]}.jpg").unlink()
    (run / files.TUNING).unlink()
    before = digest(out)
    error_line(run_script("03_predict.py", "--input", root, "--output", out, *FLAGS, check=False))
    assert digest(out) == before


def test_a_run_that_fails_in_its_first_epoch_leaves_no_log(trained, tmp_path):
    out = clone(trained, tmp_path)
    proc = run_script("02_train.py", "--fold", "0", *args_for(trained, out), "--experiment", "nan", "--lr", "1e30",
                      "--grad-clip", "0", check=False)
    assert "loss is" in error_line(proc)
    fold = files.fold_dir(out, "nan", 0)
    assert not (fold / files.LOG).exists() and not (fold / files.LAST).exists()
    run_script("02_train.py", "--fold", "0", *args_for(trained, out), "--experiment", "nan")  # starts cleanly


# --- 11. names (any names work since issue 13: tests/test_layouts.py) ---
@pytest.mark.parametrize("name", ["extra.jpg", "voiture_ü x_front.jpg"])
def test_an_image_without_a_mask_is_one_line_whatever_its_name(trained, tmp_path, name):
    root = own_input(trained, tmp_path)
    src = next((root / files.TRAIN).glob("*.jpg"))
    shutil.copy(src, root / files.TRAIN / name)
    proc = run_script("01_prepare.py", "--input", root, "--output", tmp_path / "out", *FLAGS, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{root / files.TRAIN / name}: image has no mask" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_png_masks_are_read_like_the_gifs(trained, tmp_path):
    root = own_input(trained, tmp_path)
    for gif in (root / files.TRAIN_MASKS).glob("*.gif"):
        Image.open(gif).save(gif.with_suffix(".png"))
        gif.unlink()
    proc = run_script("01_prepare.py", "--input", root, "--output", tmp_path / "out", *FLAGS)
    assert "checked 64 training images of 4 cars" in proc.stdout and "one group per car" in proc.stdout


# --- 13. damaged stage files ---
@pytest.mark.parametrize("content", [b"", b"id,car\nx,y\n", b"\xff\xfe\x00garbage"])
def test_a_damaged_folds_csv_names_the_repair_and_the_repair_works(trained, tmp_path, content):
    out = clone(trained, tmp_path)
    replace_file(out / "folds.csv", content)
    line = strict_error(run_script("02_train.py", "--fold", "0", *args_for(trained, out), "--resume", check=False))
    assert f"{out / 'folds.csv'}:" in line and "01_prepare.py --force" in line
    line = strict_error(run_script("01_prepare.py", *args_for(trained, out), check=False))
    assert "--force" in line
    run_script("01_prepare.py", *args_for(trained, out), "--force")
    run_script("03_predict.py", *args_for(trained, out))  # the same split as before: the models stand


# --- 15. masks are read through their palette ---
def test_palette_masks_are_read_as_they_look(tmp_path):
    index = np.zeros((8, 10), np.uint8)
    index[2:5, 3:7] = 1
    im = Image.fromarray(index, "P")
    im.putpalette([7, 7, 7, 107, 107, 107] + [0] * 762)
    im.save(tmp_path / "grey.gif")
    with pytest.raises(PipelineError, match="not binary"):
        inputs.read_mask(tmp_path / "grey.gif")
    im.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 is white: the object is where index is 0
    im.save(tmp_path / "inverted.gif")
    assert np.array_equal(inputs.read_mask(tmp_path / "inverted.gif"), index == 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.save(tmp_path / "red.gif")
    with pytest.raises(PipelineError, match="colour mask"):
        inputs.read_mask(tmp_path / "red.gif")
