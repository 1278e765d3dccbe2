"""--time-budget: fit one model's epochs into a number of minutes on the machine it trains on.

Before its first epoch a run times a few training steps of its own network on its own batches (at the size of the
epochs before ``--large-epochs`` and at the full size), and the labelling of a few test photos where it labels them
(``--pseudo-epochs``). From those it plans the run: the plain epochs (``--epochs``), the pseudo-label epochs and the
large epochs, each its steps times its step time, plus the labelling. When the plan is longer than the budget it
cuts in this order (``plans``), and trains the first plan that fits:

1. fewer pseudo-label epochs, down to half of them (and never fewer than the large epochs, which end the run on
   the labelled photos);
2. none: no labelling either, the large epochs are then the last plain ones;
3. the plain and large epochs by one factor, the largest that fits (each at least 1).

The order is measured, not a guess (benchmarks/results/recipes.md, section "Cut order"): on held-out cars the
plain epochs are worth the most a second and a short pseudo-label phase the least (cutting all three kinds by
one factor, 16 + 4 of 29 + 8, scored below 29 plain epochs with no pseudo-labels at all). The plan is made once:
a resumed run keeps the epochs its checkpoint was planned with; its checkpoint also keeps the epochs asked, and a
count the resumed command line gives other than the one asked replaces the planned one (``--resume --epochs N``
extends a budgeted run as any other: ``lib/train.plan_budget``).

What the budget does not count: validation (``--val-every``), writing checkpoints, starting the run, and the other
stages; a run of 02 ends within about the budget plus those. The timing is a sample of a few steps: a machine whose
speed moves during the run (another job on its cores) moves the run's length with it.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace


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


def plans(c: Counts) -> Iterator[Counts]:
    """The plans a budget tries, best first (the module's order): ``c``; fewer pseudo-label epochs, down to half
    (at least the large ones); none; then the plain and large epochs by factors 0.99 ... 0.01."""
    yield c
    if c.pseudo:
        least = max(math.ceil(c.pseudo / 2), min(c.large, c.pseudo))
        yield from (replace(c, pseudo=n) for n in range(c.pseudo - 1, least - 1, -1))
        c = replace(c, pseudo=0, large=min(c.large, c.epochs))
        yield c
    last = c
    for i in range(99, 0, -1):
        smaller = scaled(c, i / 100)
        if smaller != last:  # rounding repeats a plan: each once
            yield smaller
            last = smaller


def fit(c: Counts, t: Timing, budget_s: float) -> Counts:
    """The first of ``plans(c)`` whose ``seconds`` fit ``budget_s``: ``c`` itself where it fits; where none does,
    the smallest (one plain epoch, one large where they were set, no pseudo-label epochs)."""
    for candidate in plans(c):
        if seconds(candidate, t) <= budget_s:
            return candidate
    return scaled(replace(c, pseudo=0, large=min(c.large, c.epochs)), 0.0)


def describe(planned: Counts, full: Counts, t: Timing, budget_min: float, sizes: tuple[str, str]) -> str:
    """The line a run prints: what it measured, what the set counts would take and what it trains."""
    small, large = sizes
    measured = (f"steps of {t.small_step:.2f} s at {small}, {t.large_step:.2f} s at {large}" if full.large
                else f"steps of {t.large_step:.2f} s at {large}")
    if t.labelling:
        measured += f", labelling {t.labelling:.0f} s"

    def shape(c: Counts) -> str:
        text = f"{c.epochs} epoch{'s' * (c.epochs != 1)}" + (f" + {c.pseudo} on labelled test images" if c.pseudo else "")
        text += f" (the last {c.large} at {large})" if c.large else ""
        return text + (", no pseudo-label epochs" if full.pseudo and not c.pseudo else "")
    want = seconds(full, t) / 60
    if planned == full:
        return (f"time budget {budget_min:g} min: {measured}; {shape(full)} take about {want:.1f} min: all of them")
    cut = "does not fit even" if seconds(planned, t) / 60 > budget_min else "fits"
    return (f"time budget {budget_min:g} min: {measured}; {shape(full)} would take about {want:.1f} min: training "
            f"{shape(planned)} instead, about {seconds(planned, t) / 60:.1f} min ({cut} the budget; "
            "--time-budget 0 trains every epoch)")
