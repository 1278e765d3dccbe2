"""Pseudo-labels (--pseudo-epochs, lib/pseudo.py): the test images labelled by the run's own weights, more epochs on
training + labelled images under a second cosine, exact resume, the full model's preset value, refusals."""
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import params
from conftest import TINY_FLAGS, run_script, start_stopped
from lib import files, pseudo
from lib.cache import load_net_image
from lib.model import read_checkpoint
from lib.task import Task
from lib.train import Schedule, lr_factor
from test_train import prepared  # noqa: F401 (the fixture)


def args(root, out, *extra):
    return ["--fold", "0", "--input", root, "--output", out, *TINY_FLAGS, "--device", "cpu", "--epochs", "1",
            "--pseudo-epochs", "2", *extra]


def test_the_second_cosine_follows_the_first():
    s = Schedule(total=100, warmup=10, min_ratio=0.01, second=50, second_peak=0.5)
    assert [s(i) for i in range(100)] == [lr_factor(i, 100, 10, 0.01) for i in range(100)]
    assert s(100) == pytest.approx(0.5 / 10)  # a fresh warm-up
    assert s(109) == pytest.approx(0.5) and s(149) == pytest.approx(0.5 * lr_factor(49, 50, 10, 0.01))
    assert s(150) == pytest.approx(0.005)  # ends where the first ended, times the peak
    assert Schedule(100, 10, 0.01)(150) == pytest.approx(0.01)  # without a second cosine: the first one's end


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_pseudo_masks_are_the_decisions_in_the_caches_form(kind):
    p = params.Params(classes={"binary": 1, "multiclass": 3, "multilabel": 2}[kind], multilabel=kind == "multilabel")
    task = Task.of(p)
    rng = np.random.default_rng(0)
    prob = rng.random((2, task.channels, 8, 12)).astype(np.float32)
    if not task.binary and not task.multilabel:
        prob /= prob.sum(1, keepdims=True)
    masks = task.pseudo_mask(task.to_maps(prob.copy()))
    assert masks.shape == (2, 8, 12) and masks.dtype == np.uint8
    if task.binary:
        assert np.array_equal(masks, np.where(prob[:, 0] > 0.5, 255, 0))
    elif task.multilabel:
        assert np.array_equal(masks, (prob[:, 0] > 0.5) * 1 + (prob[:, 1] > 0.5) * 2)
    else:
        assert np.array_equal(masks, prob.argmax(1))


def test_pseudo_epochs_label_the_test_images_and_train_on_them(prepared):
    root, out = prepared
    proc = run_script("02_train.py", *args(root, out))
    assert "fold 0 epoch 3/3" in proc.stdout and "labelled 16 test images with the weights of epoch 1" in proc.stdout
    fold = files.fold_dir(out, "demo", 0)
    log = pd.read_csv(fold / files.LOG)
    assert log.epoch.tolist() == [1, 2, 3]
    labelled = pseudo.load(fold, (16, 64, 96, 3), "")
    test = sorted((root / "test").iterdir())
    assert len(test) == 16  # the test images, none of fold 0's validation cars
    assert np.array_equal(labelled.images[0], load_net_image(test[0], 64, 96)[0])
    assert set(np.unique(labelled.masks)) <= {0, 255} and labelled.masks.mean() > 0
    # epoch 1 trains the 32 training images (4 batches of 8), epochs 2-3 those and the 16 labelled ones (6 batches)
    last = read_checkpoint(fold / files.LAST)
    assert last["scheduler"]["last_epoch"] == 4 + 2 * 6


def test_pseudo_max_labels_a_seeded_sample_of_the_test_images(tiny_demo):
    every = pseudo.test_paths(params.Params(input=str(tiny_demo)))
    assert len(every) == 16 and every == sorted(every)
    five = pseudo.test_paths(params.Params(input=str(tiny_demo), pseudo_max=5))
    assert len(five) == 5 and five == sorted(five) and set(five) < set(every)
    assert five == pseudo.test_paths(params.Params(input=str(tiny_demo), pseudo_max=5))  # the same draw each run
    assert five != pseudo.test_paths(params.Params(input=str(tiny_demo), pseudo_max=5, seed=1))
    assert pseudo.test_paths(params.Params(input=str(tiny_demo), pseudo_max=16)) == every


def test_a_killed_pseudo_label_run_resumes_to_the_same_result_and_a_lost_label_file_is_refused(prepared):
    root, out = prepared
    run_script("02_train.py", *args(root, out, "--experiment", "straight"))
    # stopped once epoch 2's last.pt is written: the run is past its --epochs 1, into its pseudo-label epochs
    proc = start_stopped("02_train.py", *args(root, out, "--experiment", "killed"), at="lib.train:write_checkpoint",
                         name=files.LAST, calls=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = files.fold_dir(out, "killed", 0)
    assert read_checkpoint(killed / files.LAST)["epoch"] == 2
    saved = killed / "saved.npz"
    shutil.copy(killed / pseudo.FILE, saved)
    (killed / pseudo.FILE).unlink()
    refused = run_script("02_train.py", *args(root, out, "--experiment", "killed", "--resume"), check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert str(killed / pseudo.FILE) in refused.stderr and "--restart" in refused.stderr
    printed = refused.stderr.split("train the fold again: ", 1)[1].strip().strip("`")
    assert printed.split()[1:3] == ["02_train.py", "--fold"] and "--restart" in printed.split()
    assert "--experiment killed" in printed  # the user's own flags
    repaired = out.parent / "repaired"  # the printed command, run in a copy of the killed state: it trains again
    shutil.copytree(out, repaired)
    command = printed.replace(str(out), str(repaired)).split()
    assert run_script(Path(command[1]).name, *command[2:]).returncode == 0
    assert read_checkpoint(files.fold_dir(repaired, "killed", 0) / files.LAST)["epoch"] == 3
    shutil.move(saved, killed / pseudo.FILE)
    run_script("02_train.py", *args(root, out, "--experiment", "killed", "--resume"))
    a, b = (read_checkpoint(files.fold_dir(out, e, 0) / files.LAST) for e in ("straight", "killed"))
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_without_test_images_the_run_says_so_and_trains_its_epochs(prepared, tmp_path):
    root, out = prepared
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("train", "train_masks"):
        (bare / name).symlink_to(root / name, target_is_directory=True)
    proc = run_script("02_train.py", *args(bare, out))
    assert "no test images" in proc.stdout and "--pseudo-epochs 2 skipped" in proc.stdout
    assert pd.read_csv(files.fold_dir(out, "demo", 0) / files.LOG).epoch.tolist() == [1]


def test_the_full_models_pseudo_epochs_come_from_the_preset_unless_given(monkeypatch):
    p = params.Params(full_pseudo_epochs=6, pseudo_epochs=0)
    monkeypatch.setattr(params, "GIVEN", set())
    assert params.full_model(p).pseudo_epochs == 6
    monkeypatch.setattr(params, "GIVEN", {"pseudo_epochs"})
    assert params.full_model(p).pseudo_epochs == 0
    assert params.full_model(params.Params(pseudo_epochs=3)).pseudo_epochs == 3  # -1: --pseudo-epochs itself


def test_pseudo_labels_with_tiles_are_refused_in_one_line(tiny_demo, tmp_path):
    proc = run_script("02_train.py", "--fold", "0", "--input", tiny_demo, "--output", tmp_path / "out", *TINY_FLAGS,
                      "--tile-size", "64", "--pseudo-epochs", "1", check=False)
    assert proc.returncode != 0 and "--pseudo-epochs" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    # what the messages add: the draw, only where --pseudo-max cut the set
    assert pseudo.sample_note(params.Params(pseudo_max=5, seed=3), 5) == " (a --pseudo-max sample drawn with --seed 3)"
    assert pseudo.sample_note(params.Params(), 16) == "" and pseudo.sample_note(params.Params(pseudo_max=20), 16) == ""
