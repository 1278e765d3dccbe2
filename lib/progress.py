"""Progress a person can read: a tqdm bar on a terminal; in a log file or CI, one plain line every so often.

On a terminal tqdm redraws one line in place. Written to a file, each redraw would be one more line (``make demo >
log`` once wrote thousands), so there the bar is drawn at most every ``LOG_EVERY_S`` seconds, as a line of its own,
and not at all for a step shorter than that.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import tqdm

LOG_EVERY_S = 30.0


class _Lines:
    """A file for tqdm that turns each redraw into one line (empty redraws, which clear a bar, write nothing)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, desc: str = "", total: int | None = None, leave: bool = False,
             disable: bool = False, **kwargs) -> tqdm:
    """tqdm(iterable, ...) drawn in place on a terminal, else as a line every LOG_EVERY_S seconds (and at the end
    when ``leave``)."""
    if disable or os.environ.get("TQDM_DISABLE"):
        return tqdm(iterable, desc=desc, total=total, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, **kwargs)
    # delay: nothing until the step has run LOG_EVERY_S (a quick step, or one that fails at once, writes no line)
    return tqdm(iterable, desc=desc, total=total, leave=leave, file=_Lines(sys.stderr), mininterval=LOG_EVERY_S,
                maxinterval=LOG_EVERY_S, delay=LOG_EVERY_S, ncols=100, ascii=True, **kwargs)
