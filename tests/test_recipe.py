"""The CPU recipe's parts: folds side by side (--jobs), the zoom-out augmentation with a black border, training on
crops of a larger input, bf16 on CPUs with bf16 hardware."""
import shutil

import numpy as np
import pytest
import torch

import params
from conftest import TINY_FLAGS, run_script
from lib import files
from lib.data import train_transform
from lib.jobs import threads_each
from lib.model import read_checkpoint
from lib.runtime import Precision, cpu_has_bf16


@pytest.fixture
def prepared(tiny_demo, tiny_prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_prepared, out)
    return tiny_demo, out


def digests(out, experiment="demo"):
    return [read_checkpoint(files.fold_dir(out, experiment, k) / files.BEST, torch.device("cpu"))["digest"]
            for k in (0, 1)]


def test_jobs_train_the_folds_side_by_side_as_one_process_would(prepared, tmp_path):
    root, out = prepared
    flags = ["--input", root, "--output", out, *TINY_FLAGS, "--epochs", "1", "--amp", "off"]
    side = run_script("02_train.py", "--fold", "all", *flags, "--jobs", "2")
    assert "2 at a time, 1 thread(s) each" in side.stdout
    for k in (0, 1):
        assert f"fold {k}: best val Dice" in side.stdout
    twin = tmp_path / "twin"
    shutil.copytree(out, twin)
    for k in (0, 1):  # what a single process with the same thread count trains
        shutil.rmtree(files.fold_dir(twin, "demo", k))
    run_script("02_train.py", "--fold", "all", "--threads", "1", "--input", root, "--output", twin, *flags[4:])
    assert digests(out) == digests(twin)  # the same weights, bit for bit


def test_a_failed_fold_fails_the_command_and_the_named_continuation_finishes(prepared):
    root, out = prepared
    flags = ["--input", root, "--output", out, *TINY_FLAGS, "--epochs", "1"]
    run_script("02_train.py", "--fold", "1", *flags)
    before = (files.fold_dir(out, "demo", 1) / files.BEST).read_bytes()
    proc = run_script("02_train.py", "--fold", "all", *flags, "--jobs", "2", check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: fold(s) 1 failed") and "--resume" in last
    assert "a run exists" in proc.stderr  # the fold's own reason, from its process
    assert (files.fold_dir(out, "demo", 0) / files.BEST).exists()  # the other fold finished
    assert (files.fold_dir(out, "demo", 1) / files.BEST).read_bytes() == before  # the refused fold is untouched
    again = run_script("02_train.py", "--fold", "all", *flags, "--jobs", "2", "--resume")
    assert again.returncode == 0 and (files.fold_dir(out, "demo", 1) / files.BEST).read_bytes() == before


def test_threads_share_the_cores():
    assert threads_each(1) >= threads_each(2) >= 1
    assert threads_each(10_000) == 1


def test_jobs_must_be_positive():
    with pytest.raises(ValueError, match="--jobs 0 must be in"):
        params.make_params(jobs=0)


@pytest.mark.parametrize("border, uncovered_zero", [("constant", True), ("reflect", False)])
def test_zoom_out_border(border, uncovered_zero):
    image = np.full((64, 96, 3), 200, np.uint8)
    mask = np.full((64, 96), 255, np.uint8)
    t = train_transform(0, 1, 0, scale=(0.6, 0.6), translate=0.0, border=border)
    t.set_random_seed(0)
    out = t(image=image, mask=mask)
    corner_image, corner_mask = out["image"][0, 0], out["mask"][0, 0]
    if uncovered_zero:  # a photo from further away with a dark floor edge: black, and background in the mask
        assert corner_image.max() == 0 and corner_mask == 0
        assert out["mask"][32, 48] == 255  # the car is still there, smaller
    else:
        assert corner_image.min() == 200 and corner_mask == 255


def test_scale_range_is_checked():
    with pytest.raises(ValueError, match="--scale-low 1.2 is above --scale-high 1.1"):
        params.make_params(scale_low=1.2, scale_high=1.1)


@pytest.mark.parametrize("amx, avx512_bf16", [(False, False), (True, False), (False, True), (True, True)])
def test_cpu_autocast_is_bf16_with_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert cpu_has_bf16() == (amx or avx512_bf16)
    auto = Precision.for_device(torch.device("cpu"), "auto")
    assert auto.enabled == (amx or avx512_bf16) and (not auto.enabled or auto.dtype == torch.bfloat16)


def test_cpu_autocast_settings():
    cpu = torch.device("cpu")
    assert Precision.for_device(cpu, "auto").enabled == cpu_has_bf16()
    assert not Precision.for_device(cpu, "off").enabled
    assert Precision.for_device(cpu, "bf16").dtype == torch.bfloat16


def test_crops_train_and_whole_images_validate(prepared):
    root, out = prepared
    proc = run_script("02_train.py", "--fold", "0", "--input", root, "--output", out, *TINY_FLAGS, "--epochs", "1",
                      "--crop-height", "32", "--crop-width", "64")
    assert "best val Dice" in proc.stdout
    p, _ = params.parse("t", [str(a) for a in ["--input", root, "--output", out, *TINY_FLAGS]])
    from lib.oof import load_oof
    oof = load_oof(files.fold_dir(out, "demo", 0) / files.OOF)
    assert oof.probs[0].shape == (p.height, p.width)  # validation maps of whole images


def test_crop_transform_and_its_checks():
    image, mask = np.zeros((192, 288, 3), np.uint8), np.zeros((192, 288), np.uint8)
    t = train_transform(0.5, 0.5, 0.5, crop=(128, 192))
    t.set_random_seed(1)
    out = t(image=image, mask=mask)
    assert out["image"].shape == (128, 192, 3) and out["mask"].shape == (128, 192)
    with pytest.raises(ValueError, match="--crop-height 160 must be 0 .* up to --height 128"):
        params.make_params(height=128, crop_height=160)
    with pytest.raises(ValueError, match="--crop-width 100 must be"):
        params.make_params(crop_width=100)


# --- the model fitted on every training image (02_train.py --fold full) ---
def test_full_model_alone_predicts_with_hflip_and_half(prepared):
    root, out = prepared
    flags = ["--input", root, "--output", out, *TINY_FLAGS, "--epochs", "1"]
    proc = run_script("02_train.py", "--fold", "full", *flags)
    assert "full: trained on every training image for 1 epochs" in proc.stdout
    folder = files.fold_dir(out, "demo", files.FULL)
    assert folder.name == "full" and (folder / files.BEST).exists() and not (folder / files.OOF).exists()
    from lib import folds as folds_mod
    split = folds_mod.read(out)
    ckpt = read_checkpoint(folder / files.BEST, torch.device("cpu"))
    assert ckpt["split"] == folds_mod.fold_digest(split, files.FULL) != folds_mod.fold_digest(split, 0)
    import pandas as pd
    log = pd.read_csv(folder / files.LOG)
    assert len(log) == 1 and log.val_dice.isna().all()

    proc = run_script("03_predict.py", *flags)
    assert "no fold models to tune on" in proc.stdout and "full/model.pt (fitted on every training image)" in proc.stdout
    import json
    tuning = json.loads((files.run_dir(out, "demo") / files.TUNING).read_text())
    assert tuning["tuned"] is False and tuning["tta"] == "hflip" and tuning["threshold"] == 0.5
    assert [m["fold"] for m in tuning["models"]] == ["full"]
    test_ids = sorted(f.stem for f in (root / "test").glob("*.jpg"))
    assert sorted(f.stem for f in (files.run_dir(out, "demo") / files.TEST_PROBS).glob("*.png")) == test_ids
    run_script("04_submit.py", *flags)
    manifest = json.loads(next(files.run_dir(out, "demo").glob("submission*.json")).read_text())
    assert manifest["oof_dice"] is None and manifest["threshold"] == 0.5


def test_full_model_predicts_with_the_fold_models_tuning(prepared, tmp_path):
    root, out = prepared
    flags = ["--input", root, "--output", out, *TINY_FLAGS, "--epochs", "1"]
    run_script("02_train.py", "--fold", "all", *flags)
    run_script("02_train.py", "--fold", "full", *flags)
    first = run_script("03_predict.py", *flags)
    assert "TTA and threshold from the 2 fold models" in first.stdout
    import json
    tuning = json.loads((files.run_dir(out, "demo") / files.TUNING).read_text())
    assert tuning["final"] == "full" and [m["fold"] for m in tuning["models"]] == [0, 1, "full"]
    assert tuning["oof_dice"] > 0
    meta = json.loads((files.run_dir(out, "demo") / files.TEST_PROBS / files.PROBS_META).read_text())
    assert meta["models"] == tuning["models"]
    again = run_script("03_predict.py", *flags)
    assert "tuning: reusing" in again.stdout and "0 to predict" in again.stdout
    photos = run_script("03_predict.py", *flags, "--images", root / "test", "--images-out", tmp_path / "photos")
    assert "with the full model" in photos.stdout and "(tuned)" in photos.stdout
