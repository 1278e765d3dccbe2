"""Pictures of the results: 03's overlays/ folder, class colours and legends, the learning curve's epoch axis."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
from PIL import Image

from conftest import EXPERIMENT
from lib import files, gallery, plot
from lib.task import Task
from test_failures import args_for, clone
from conftest import run_script

COLOURS = ((0, 0, 0), (200, 30, 30), (30, 30, 200))
TASK = Task(3, ("background", "road", "water"), COLOURS)


def _has_colour(picture: np.ndarray, rgb, tol: int = 12) -> bool:
    return bool((np.abs(picture.astype(int) - np.array(rgb)).max(axis=-1) <= tol).any())


def test_class_colours_and_legend_in_a_multiclass_overlay():
    """The tint uses the --class-colors colours and the legend shows every scored class, even one that was not
    predicted; the truth is outlined; the checkpoint's record keeps the colours, the shared record does not."""
    image = np.full((120, 200, 3), 128, np.uint8)
    labels = np.zeros((120, 200), np.uint8)
    labels[60:, 100:] = 1  # road only: water is predicted nowhere
    truth = np.zeros_like(labels)
    truth[30:90, 20:80] = 2
    plain = TASK.overlay(image, labels)
    assert plain.shape == image.shape
    assert _has_colour(plain[60:, 100:], np.array(COLOURS[1]) * plot.ALPHA + 128 * (1 - plot.ALPHA), 2)  # the tint
    assert _has_colour(plain[:40, :80], COLOURS[2], 0) and _has_colour(plain[:40, :80], COLOURS[1], 0)  # legend
    assert _has_colour(plain[:40, :80], plot.LEGEND_BOX, 0)
    outlined = TASK.overlay(image, labels, truth)
    assert _has_colour(outlined[30:91, 79:81], COLOURS[2], 0)  # water's truth border at column 79
    assert TASK.checkpoint_record()["colors"] == [list(c) for c in COLOURS]
    assert "colors" not in TASK.record()
    assert Task.from_record(TASK.checkpoint_record()).colors == COLOURS
    no_colours = Task(3, ("background", "road", "water"))
    assert _has_colour(no_colours.overlay(image, labels)[:40, :80], plot.PALETTE[2], 0)  # the fixed palette


def test_binary_overlay_with_truth_has_outline_and_legend():
    image = np.full((100, 160, 3), 90, np.uint8)
    pred = np.zeros((100, 160), bool)
    pred[40:80, 60:120] = True
    truth = np.zeros_like(pred)
    truth[50:90, 70:130] = True
    bare = Task().overlay(image, pred)
    drawn = Task().overlay(image, pred, truth)
    assert not _has_colour(bare, plot.TRUTH_COLOUR, 0)
    assert _has_colour(drawn[85:95, 70:130], plot.TRUTH_COLOUR, 0)  # the truth's bottom edge
    assert _has_colour(drawn[:30, :80], plot.LEGEND_BOX, 0)


def test_pick_worst_and_best_without_repeats():
    assert gallery.pick(np.array([0.9, 0.1, 0.5, 0.7]), 2) == [("worst", 1, 1), ("worst", 2, 2), ("best", 1, 0),
                                                                ("best", 2, 3)]
    assert gallery.pick(np.array([0.3, 0.8]), 3) == [("worst", 1, 0), ("worst", 2, 1)]


def test_a_curve_with_one_validation_point_has_whole_epochs(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    figures = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), savefig(self, *a, **k))[1])
    log = pd.DataFrame({"epoch": [1], "train_loss": [0.6], "val_loss": [0.5], "val_dice": [0.8]})
    plot.learning_curve(log, tmp_path / "curve.png", "fold 0")
    assert (tmp_path / "curve.png").stat().st_size > 0
    for ax in figures[0].axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert 1 in ticks


def test_03_writes_overlays_once(trained, tmp_path):
    """The trained run's overlays/: the 3 worst and 3 best out-of-fold pictures, Dice in the name, the truth
    outlined in green; 4 test ones; 03 says where. A re-run leaves them untouched."""
    folder = trained.run / gallery.FOLDER
    assert f"in {folder}" in trained.predict.stdout
    names = sorted(p.name for p in folder.glob("*.jpg"))
    oof = [n for n in names if n.startswith("oof_")]
    assert len(oof) == 2 * gallery.SHOWN and len([n for n in names if n.startswith("test_")]) == gallery.TEST_SHOWN
    dice = {n: float(re.match(r"oof_(worst|best)\d_dice([0-9.]+)_", n).group(2)) for n in oof}
    worst = max(d for n, d in dice.items() if "_worst" in n)
    assert worst <= min(d for n, d in dice.items() if "_best" in n)
    for name in oof:
        picture = np.array(Image.open(folder / name).convert("RGB"))
        assert picture.shape[1] == gallery.MIN_WIDTH and _has_colour(picture, plot.TRUTH_COLOUR, 40)
    assert json.loads((folder / gallery.MADE_BY).read_text())["files"] == names
    out = clone(trained, tmp_path)
    run = files.run_dir(out, EXPERIMENT) / gallery.FOLDER
    times = {p.name: os.stat(p).st_mtime_ns for p in run.iterdir()}
    again = run_script("03_predict.py", *args_for(trained.root, out))
    assert f"overlays: up to date in {run}" in again.stdout
    assert {p.name: os.stat(p).st_mtime_ns for p in run.iterdir()} == times
