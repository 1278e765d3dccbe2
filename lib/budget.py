"""--time-budget: fit one model's epochs into a number of minutes on the machine it trains on.

Before its first epoch a run times a few training steps of its own network on its own batches (at the size of the
epochs before ``--large-epochs`` and at the full size), and the labelling of a few test photos where it labels them
(``--pseudo-epochs``). From those it plans the run: the plain epochs (``--epochs``), the pseudo-label epochs and the
large epochs, each its steps times its step time, plus the labelling. When the plan is longer than the budget the
three counts shrink by one factor (each at least 1 where it was set), the largest that fits, so the recipe keeps its
shape: a slower CPU trains fewer epochs of the same schedule, a faster one the preset's own. The plan is made once:
a resumed run keeps the epochs its checkpoint was planned with.

What the budget does not count: validation (``--val-every``), writing checkpoints, starting the run, and the other
stages; a run of 02 ends within about the budget plus those. The timing is a sample of a few steps: a machine whose
speed moves during the run (another job on its cores) moves the run's length with it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counts:
    epochs: int  # --epochs: on the training images
    pseudo: int  # --pseudo-epochs: on training + labelled test images (0 without test images)
    large: int  # --large-epochs: the last this many at the full size (0: every epoch at the full size)


@dataclass(frozen=True)
class Timing:
    plain_steps: int  # steps (batches) of an epoch on the training images
    mixed_steps: int  # of an epoch on training + labelled test images (0 without test images)
    small_step: float  # seconds a step takes at --small-scale (unused without --large-epochs)
    large_step: float  # seconds a step takes at the full size
    labelling: float  # seconds to label the test images (0 without pseudo-label epochs)


def seconds(c: Counts, t: Timing) -> float:
    """How long the epochs of ``c`` take at ``t``'s step times, with the labelling where there are pseudo-label
    epochs: epochs 1..epochs on the training images, then the pseudo-label ones; the last ``large`` of all of them
    at the full size, the others at --small-scale (all at the full size where ``large`` is 0)."""
    total = c.epochs + c.pseudo
    big = min(c.large, total) if c.large else total
    big_mixed = min(big, c.pseudo)
    big_plain = big - big_mixed
    small_plain, small_mixed = c.epochs - big_plain, c.pseudo - big_mixed
    return ((small_plain * t.plain_steps + small_mixed * t.mixed_steps) * t.small_step
            + (big_plain * t.plain_steps + big_mixed * t.mixed_steps) * t.large_step
            + (t.labelling if c.pseudo else 0.0))


def scaled(c: Counts, factor: float) -> Counts:
    """``c`` times ``factor``, rounded; each count that was set stays at least 1, the large epochs at most all."""
    def one(n: int) -> int:
        return max(1, round(n * factor)) if n else 0
    epochs, pseudo = one(c.epochs), one(c.pseudo)
    return Counts(epochs, pseudo, min(one(c.large), epochs + pseudo))


def fit(c: Counts, t: Timing, budget_s: float) -> Counts:
    """The largest scaling of ``c`` (factors 1, 0.99, ... 0.01) whose ``seconds`` fit ``budget_s``: ``c`` itself
    where it fits; the smallest (one epoch of each kind that was set) where none does."""
    for i in range(100, 0, -1):
        candidate = scaled(c, i / 100)
        if seconds(candidate, t) <= budget_s:
            return candidate
    return scaled(c, 0.0)


def describe(planned: Counts, full: Counts, t: Timing, budget_min: float, sizes: tuple[str, str]) -> str:
    """The line a run prints: what it measured, what the set counts would take and what it trains."""
    small, large = sizes
    measured = (f"steps of {t.small_step:.2f} s at {small}, {t.large_step:.2f} s at {large}" if full.large
                else f"steps of {t.large_step:.2f} s at {large}")
    if t.labelling:
        measured += f", labelling {t.labelling:.0f} s"

    def shape(c: Counts) -> str:
        text = f"{c.epochs} epoch{'s' * (c.epochs != 1)}" + (f" + {c.pseudo} on labelled test images" if c.pseudo else "")
        return text + (f" (the last {c.large} at {large})" if c.large else "")
    want = seconds(full, t) / 60
    if planned == full:
        return (f"time budget {budget_min:g} min: {measured}; {shape(full)} take about {want:.1f} min: all of them")
    cut = "does not fit even" if seconds(planned, t) / 60 > budget_min else "fits"
    return (f"time budget {budget_min:g} min: {measured}; {shape(full)} would take about {want:.1f} min: training "
            f"{shape(planned)} instead, about {seconds(planned, t) / 60:.1f} min ({cut} the budget; "
            "--time-budget 0 trains every epoch)")
