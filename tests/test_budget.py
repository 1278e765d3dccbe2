"""--time-budget (lib/budget.py): the plan's arithmetic, the largest scaling that fits, and a run that times its
steps without changing what it learns, trains the planned epochs and resumes with them."""
import pandas as pd
import pytest
import torch

import params
from conftest import run_script
from lib import files
from lib.budget import Counts, Timing, describe, fit, scaled, seconds
from lib.model import read_checkpoint
from lib.runtime import Dist
from lib.train import plan_budget
from test_train import prepared, train_args  # noqa: F401 (the fixture)

T = Timing(plain_steps=10, mixed_steps=20, small_step=0.5, large_step=2.0, labelling=30.0)


def test_the_plan_counts_each_epoch_at_its_size_and_the_labelling():
    # 6 plain epochs (10 steps) small, 4 pseudo-label epochs (20 steps): 1 small, the last 3 large; labelling 30 s
    assert seconds(Counts(6, 4, 3), T) == pytest.approx(6 * 10 * 0.5 + 1 * 20 * 0.5 + 3 * 20 * 2.0 + 30)
    # more large epochs than pseudo-label ones reach back into the plain epochs
    assert seconds(Counts(6, 2, 3), T) == pytest.approx(5 * 10 * 0.5 + 1 * 10 * 2.0 + 2 * 20 * 2.0 + 30)
    # no --large-epochs: every epoch at the full size; no pseudo-label epochs: no labelling
    assert seconds(Counts(6, 0, 0), T) == pytest.approx(6 * 10 * 2.0)


def test_the_budget_keeps_the_largest_scaling_that_fits():
    full = Counts(29, 8, 3)
    assert fit(full, T, seconds(full, T)) == full  # it fits: every epoch
    for budget in (90.0, 150.0, 250.0, seconds(full, T) - 1):  # the full plan: 345 s
        got = fit(full, T, budget)
        assert seconds(got, T) <= budget and got != full
        factor = next(i / 100 for i in range(100, 0, -1) if scaled(full, i / 100) == got)
        assert all(seconds(scaled(full, f / 100), T) > budget for f in range(round(factor * 100) + 1, 101))
        assert got.epochs >= 1 and got.pseudo >= 1 and 1 <= got.large <= got.epochs + got.pseudo
    assert fit(full, T, 1.0) == Counts(1, 1, 1)  # nothing fits: one epoch of each kind
    assert fit(Counts(5, 0, 0), T, 1.0) == Counts(1, 0, 0)  # kinds that were off stay off


def test_the_line_says_what_was_measured_and_what_trains():
    full = Counts(29, 8, 3)
    cut = fit(full, T, 250.0)
    line = describe(cut, full, T, 5.0, ("160x224", "320x448"))
    assert line.startswith("time budget 5 min: steps of 0.50 s at 160x224, 2.00 s at 320x448, labelling 30 s; "
                           "29 epochs + 8 on labelled test images (the last 3 at 320x448) would take about")
    assert f"training {cut.epochs} epochs + {cut.pseudo} on labelled test images" in line
    assert "fits the budget; --time-budget 0 trains every epoch" in line
    assert describe(full, full, T, 100.0, ("160x224", "320x448")).endswith(": all of them")


def test_the_full_model_takes_full_time_budget_unless_the_command_line_gives_one():
    p, _ = params.parse("t", ["--preset", "cpu"])
    assert p.time_budget == 0 and params.full_model(p).time_budget == p.full_time_budget > 0
    p, _ = params.parse("t", ["--preset", "cpu", "--time-budget", "0"])
    assert params.full_model(p).time_budget == 0
    p, _ = params.parse("t", ["--time-budget", "7"])
    assert params.full_model(p).time_budget == 7  # -1: the fold models' budget


def test_a_run_plans_within_its_budget_trains_that_and_resumes_with_it(prepared):
    root, out = prepared
    # a budget no epoch fits: one of each kind (plain, pseudo-label, large), whatever this machine's speed
    cut = run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "3", "--pseudo-epochs", "2",
                                                                "--large-epochs", "2", "--device", "cpu",
                                                                "--time-budget", "0.0001", "--experiment", "cut"))
    assert "would take about" in cut.stdout and "training 1 epoch + 1 on labelled test images (the last 1 at " \
        "64x96) instead" in cut.stdout and "does not fit even the budget" in cut.stdout
    fold = files.fold_dir(out, "cut", 0)
    assert pd.read_csv(fold / files.LOG).epoch.tolist() == [1, 2]
    saved = read_checkpoint(fold / files.LAST)["params"]
    assert (saved["epochs"], saved["pseudo_epochs"], saved["large_epochs"]) == (1, 1, 1)
    # resumed, a run keeps the epochs its checkpoint was planned with instead of timing again
    p = params.make_params(**{**saved, "epochs": 3, "pseudo_epochs": 2, "large_epochs": 2})
    again = plan_budget(p, fold / files.LAST, None, None, None, None, [], 0, None, Dist())
    assert (again.epochs, again.pseudo_epochs, again.large_epochs) == (1, 1, 1)


def test_timing_the_steps_changes_nothing_the_run_learns(prepared):
    """A budget every epoch fits trains the very weights of a run without one (CPU: bit-exact): the timed steps run
    on a copy of the network, and every generator is put back."""
    root, out = prepared
    runs = {}
    for name, extra in (("plain", []), ("roomy", ["--time-budget", "1000"])):
        runs[name] = run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "2", "--device",
                                                                          "cpu", "--experiment", name, *extra))
    assert "time budget 1000 min: steps of" in runs["roomy"].stdout and "all of them" in runs["roomy"].stdout
    a, b = (read_checkpoint(files.fold_dir(out, e, 0) / files.LAST)["model"] for e in ("plain", "roomy"))
    assert all(torch.equal(a[k], b[k]) for k in a)
