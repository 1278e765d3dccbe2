"""Progressive resizing (--large-epochs, --small-scale): the epochs before the last --large-epochs train on shrunk
batches, the last ones at the network size; pseudo-labels are made at the size the run trained at last."""
import numpy as np
import pandas as pd
import pytest
import torch

import params
from conftest import TINY_FLAGS, run_script
from lib import files, pseudo
from lib.model import read_checkpoint
from lib.train import Schedule, lr_factor, shrink, shrinks
from test_train import prepared  # noqa: F401 (the fixture)


def test_only_the_epochs_before_the_last_large_ones_shrink():
    p = params.Params(large_epochs=3)
    assert [shrinks(p, e, 10) for e in range(1, 11)] == [True] * 7 + [False] * 3
    assert not any(shrinks(params.Params(), e, 10) for e in range(1, 11))  # off by default
    assert not any(shrinks(params.Params(large_epochs=12), e, 10) for e in range(1, 11))  # more than the run: none


def test_the_large_epochs_warm_up_and_cool_down_again():
    s = Schedule(total=100, warmup=10, min_ratio=0.01, second=50, second_peak=0.5, third=30, third_peak=0.25)
    assert [s(i) for i in range(120)] == [Schedule(100, 10, 0.01, 50, 0.5)(i) for i in range(120)]
    assert s(120) == pytest.approx(0.25 / 10) and s(129) == pytest.approx(0.25)  # a fresh warm-up at 120
    assert s(149) == pytest.approx(0.25 * lr_factor(29, 30, 10, 0.01))
    plain = Schedule(total=100, warmup=10, min_ratio=0.01, third=40, third_peak=0.5)  # no pseudo-label epochs
    assert plain(59) == pytest.approx(lr_factor(59, 100, 10, 0.01)) and plain(60) == pytest.approx(0.05)


def test_a_shrunk_batch_averages_soft_masks_and_keeps_labels_whole():
    images = torch.arange(2 * 3 * 128 * 192, dtype=torch.float32).reshape(2, 3, 128, 192) % 251
    soft = torch.zeros(2, 1, 128, 192)
    soft[:, :, :, 97] = 1.0  # a one-pixel line: half of a 2 x 2 block after the shrink
    x, y = shrink(images.to(torch.uint8), soft, 0.5)
    assert x.shape == (2, 3, 64, 96) and x.dtype == torch.float32 and y.shape == (2, 1, 64, 96)
    assert torch.allclose(x, images.reshape(2, 3, 64, 2, 96, 2).mean((3, 5)), atol=1e-3)  # 2 x 2 means at 0.5
    assert torch.equal(y[0, 0, 0, 48], torch.tensor(0.5)) and y.sum() == soft.sum() / 4
    labels = torch.randint(0, 5, (2, 128, 192))
    _, z = shrink(images, labels, 0.5)
    assert z.dtype == torch.int64 and z.shape == (2, 64, 96) and set(z.unique().tolist()) <= set(range(5))
    _, w = shrink(images, labels, 0.4)  # sides rounded to multiples of 32: 51.2 -> 64, 76.8 -> 64
    assert w.shape == (2, 64, 64)


def test_a_scale_that_leaves_no_network_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        params.parse("t", ["--height", "160", "--width", "224", "--large-epochs", "2", "--small-scale", "0.1"])
    assert e.value.code == 2
    assert "--small-scale 0.1 shrinks the 160 x 224 training input below 32 px a side; raise it to at least 0.2" in \
        capsys.readouterr().err
    # the crop is what shrinks where there is one: 0.25 of 320 x 448 is fine, of a 64 x 96 crop it is not
    params.parse("t", ["--height", "320", "--width", "448", "--large-epochs", "2", "--small-scale", "0.25"])
    with pytest.raises(SystemExit):
        params.parse("t", ["--height", "320", "--width", "448", "--crop-height", "64", "--crop-width", "96",
                           "--large-epochs", "2", "--small-scale", "0.25"])
    assert "shrinks the 64 x 96 training input below 32 px a side; raise it to at least 0.5" in capsys.readouterr().err
    params.parse("t", ["--height", "320", "--width", "448", "--crop-height", "64", "--crop-width", "96",
                       "--large-epochs", "2", "--small-scale", "0.5"])  # the value the message names is accepted


def test_the_run_trains_small_then_large_and_labels_at_the_size_it_trained_at(prepared):
    root, out = prepared
    proc = run_script("02_train.py", "--fold", "0", "--input", root, "--output", out, *TINY_FLAGS, "--device", "cpu",
                      "--epochs", "2", "--pseudo-epochs", "2", "--large-epochs", "1", "--small-scale", "0.5")
    lines = [line for line in proc.stdout.splitlines() if "fold 0 epoch" in line]
    assert len(lines) == 4 and all(line.endswith("img/s at 32x64") for line in lines[:3])
    assert lines[3].endswith("img/s")  # the last epoch at the network size, 64 x 96
    assert "(TTA hflip@0.5)" in proc.stdout  # epoch 2 trained small: the labels are predicted small
    fold = files.fold_dir(out, "demo", 0)
    labelled = pseudo.load(fold, (16, 64, 96, 3), "")  # kept at the network size, as the large epoch reads them
    assert labelled.digest.endswith("@0.5") and 0 < labelled.masks.mean() < 255
    log = pd.read_csv(fold / files.LOG)
    assert log.epoch.tolist() == [1, 2, 3, 4] and np.isfinite(log.val_dice).all()
    schedule = read_checkpoint(fold / files.LAST)["scheduler"]["lr_lambdas"][0]
    assert schedule["third"] == 6 and schedule["third_peak"] == 0.5  # the large epoch: 48 images, 6 batches
