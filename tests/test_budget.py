"""--time-budget (lib/budget.py): the plan's arithmetic, the order it cuts in (pseudo-label epochs first, then the
plain and large ones by the largest factor that fits), and a run that times its steps without changing what it
learns, trains the planned epochs, resumes with them and extends them with --resume --epochs N."""
import pandas as pd
import pytest
import torch

import params
from conftest import run_script
from lib import files, pseudo
from lib.budget import Counts, Timing, describe, fit, plans, scaled, seconds
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


def test_the_budget_cuts_pseudo_label_epochs_first_then_plain_and_large_by_one_factor():
    full = Counts(29, 8, 3)  # 345 s at T
    assert fit(full, T, seconds(full, T)) == full  # it fits: every epoch
    order = list(plans(full))
    assert order[:6] == [full, Counts(29, 7, 3), Counts(29, 6, 3), Counts(29, 5, 3), Counts(29, 4, 3),
                         Counts(29, 0, 3)]  # half the pseudo-label epochs at least, then none (no labelling)
    shrunk = [scaled(Counts(29, 0, 3), i / 100) for i in range(99, 0, -1)]
    assert order[6:] == [c for i, c in enumerate(shrunk) if c != ([Counts(29, 0, 3)] + shrunk)[i]]  # each once
    assert len(order) == len(set(order))
    # the first plan that fits, for budgets that reach each stage of the order
    assert fit(full, T, seconds(Counts(29, 6, 3), T)) == Counts(29, 6, 3)
    assert fit(full, T, seconds(Counts(29, 4, 3), T) - 1) == Counts(29, 0, 3)
    for budget in (30.0, 60.0, seconds(Counts(29, 0, 3), T) - 1):
        got = fit(full, T, budget)
        assert seconds(got, T) <= budget and got.pseudo == 0 and got.epochs >= got.large >= 1
        factor = next(i / 100 for i in range(99, 0, -1) if scaled(Counts(29, 0, 3), i / 100) == got)
        assert all(seconds(scaled(Counts(29, 0, 3), f / 100), T) > budget for f in range(round(factor * 100) + 1, 100))
    assert fit(full, T, 1.0) == Counts(1, 0, 1)  # nothing fits: one epoch, at the full size
    assert fit(Counts(5, 0, 0), T, 1.0) == Counts(1, 0, 0)  # kinds that were off stay off
    # a short pseudo-label phase keeps at least the large epochs, which end the run on the labelled photos
    assert list(plans(Counts(10, 3, 3)))[:3] == [Counts(10, 3, 3), Counts(10, 0, 3), Counts(9, 0, 3)]
    assert list(plans(Counts(2, 2, 3)))[:2] == [Counts(2, 2, 3), Counts(2, 0, 2)]  # large: at most every epoch


def test_the_line_says_what_was_measured_and_what_trains():
    full = Counts(29, 8, 3)
    cut = fit(full, T, 330.0)
    line = describe(cut, full, T, 5.5, ("160x224", "320x448"))
    assert line.startswith("time budget 5.5 min: steps of 0.50 s at 160x224, 2.00 s at 320x448, labelling 30 s; "
                           "29 epochs + 8 on labelled test images (the last 3 at 320x448) would take about")
    assert f"training {cut.epochs} epochs + {cut.pseudo} on labelled test images" in line
    assert "fits the budget; --time-budget 0 trains every epoch" in line
    assert describe(full, full, T, 100.0, ("160x224", "320x448")).endswith(": all of them")
    dropped = describe(fit(full, T, 200.0), full, T, 200 / 60, ("160x224", "320x448"))
    assert "training 29 epochs (the last 3 at 320x448), no pseudo-label epochs instead, about 3.2 min" in dropped


def test_the_full_model_takes_full_time_budget_unless_the_command_line_gives_one():
    p, _ = params.parse("t", ["--preset", "cpu"])
    assert p.time_budget == 0 and params.full_model(p).time_budget == p.full_time_budget > 0
    p, _ = params.parse("t", ["--preset", "cpu", "--time-budget", "0"])
    assert params.full_model(p).time_budget == 0
    p, _ = params.parse("t", ["--time-budget", "7"])
    assert params.full_model(p).time_budget == 7  # -1: the fold models' budget


def test_a_run_plans_within_its_budget_trains_that_and_resumes_with_it(prepared, capsys):
    root, out = prepared
    # a budget no epoch fits: one plain epoch at the large size, no pseudo-label ones, whatever this machine's speed
    cut = run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "3", "--pseudo-epochs", "2",
                                                                "--large-epochs", "2", "--device", "cpu",
                                                                "--time-budget", "0.0001", "--experiment", "cut"))
    assert "would take about" in cut.stdout and "training 1 epoch (the last 1 at 64x96), " \
        "no pseudo-label epochs instead" in cut.stdout and "does not fit even the budget" in cut.stdout
    fold = files.fold_dir(out, "cut", 0)
    assert pd.read_csv(fold / files.LOG).epoch.tolist() == [1]
    assert ": labelled" not in cut.stdout and not (fold / pseudo.FILE).exists()  # nothing labelled
    ckpt = read_checkpoint(fold / files.LAST)
    saved = ckpt["params"]
    assert (saved["epochs"], saved["pseudo_epochs"], saved["large_epochs"]) == (1, 0, 1)
    assert ckpt["asked"] == {"epochs": 3, "pseudo_epochs": 2, "large_epochs": 2}  # what the command line asked
    # resumed with the command line it started with, a run keeps its plan instead of timing again
    p = params.make_params(**{**saved, "epochs": 3, "pseudo_epochs": 2, "large_epochs": 2})
    again, asked = plan_budget(p, fold / files.LAST, None, None, None, None, [], 0, None, Dist())
    assert (again.epochs, again.pseudo_epochs, again.large_epochs) == (1, 0, 1) and asked == ckpt["asked"]
    assert "resumed with the epochs planned at its start: 1 + 0 on labelled test images, the last 1 large (of 3 + " \
        "2 on labelled test images, the last 2 large asked)" in capsys.readouterr().out  # said, not silent
    # a checkpoint of before the asked epochs were kept: the plan, and no guess at what was asked
    old = fold.parent / "old.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "asked"}, old)
    again, asked = plan_budget(p, old, None, None, None, None, [], 0, None, Dist())
    assert (again.epochs, again.pseudo_epochs, again.large_epochs) == (1, 0, 1) and asked is None
    assert "does not record the epochs asked" in capsys.readouterr().out
    old.unlink()
    # --resume --epochs N, N other than the 3 asked, extends the budgeted run to N as it would any run
    more = run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "2", "--pseudo-epochs", "2",
                                                                 "--large-epochs", "2", "--device", "cpu",
                                                                 "--time-budget", "0.0001", "--experiment", "cut",
                                                                 "--resume"))
    assert "resumed with --epochs 2 from the command line instead of the plan (1 + 0 on labelled test images, the " \
        "last 1 large): 2 + 0 on labelled test images, the last 1 large" in more.stdout
    assert pd.read_csv(fold / files.LOG).epoch.tolist() == [1, 2] and not (fold / pseudo.FILE).exists()
    ckpt = read_checkpoint(fold / files.LAST)
    assert (ckpt["params"]["epochs"], ckpt["params"]["pseudo_epochs"], ckpt["params"]["large_epochs"]) == (2, 0, 1)
    assert ckpt["asked"] == {"epochs": 3, "pseudo_epochs": 2, "large_epochs": 2}  # still the start's


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
