"""Work in parallel, one way: the CPU count, worker processes with ordered results, and how a worker starts.

Every process pool of the project goes through ``ordered``: 01's input check (``inputs.check_train``) and cache
(``cache.build_cache``), the demo generators (``demo/``) and 04's RLE encoder (``submission.make_submission``).
One start method for all: forkserver where the platform has it (Linux), else spawn (macOS, Windows). Never fork: a
fork copies the locks of this process's running threads (OpenCV's and OpenMP's pools after any multi-threaded
cv2.resize, torch's), and a child that needs one held at the fork deadlocks. The forkserver is a clean
single-threaded process that imported the main script once; each worker is a fork of it, so it starts in
milliseconds with those modules loaded, whatever threads this process runs. Spawn starts a fresh interpreter each.

``02_train.py --fold all --jobs N`` (lib/jobs.py) launches whole stage processes instead, for the reasons given
there; it shares ``cpu_count`` and ``die_with_parent`` with the pools.
"""
from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from lib.errors import PipelineError

T = TypeVar("T")
R = TypeVar("R")

START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
IN_FLIGHT_CHUNKS = 4  # chunks per worker queued, in work or done but not yet taken: bounds memory, keeps workers fed


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def die_with_parent() -> None:
    """In a child process, first thing: on Linux, a SIGTERM when its parent dies, even by SIGKILL (no worker or fold
    runs on unattended, holding a lock or a core)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_FN: Callable | None = None  # each worker's function, set once by _start_worker


def _start_worker(fn: Callable) -> None:
    """A pool worker's start: it gets its function (with any job object bound to it) once, dies with the pool's
    parent, leaves Ctrl-C to the main process (which stops the pool), and runs OpenCV on one thread (one process
    per core already)."""
    global _FN
    _FN = fn
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import cv2
    cv2.setNumThreads(1)


def _run_chunk(chunk: list) -> list:
    return [_FN(item) for item in chunk]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


@contextlib.contextmanager
def ordered(fn: Callable[[T], R], items: Iterable[T], workers: int, chunksize: int = 1,
            in_flight: int = IN_FLIGHT_CHUNKS) -> Iterator[Iterator[R]]:
    """Context yielding an iterator of ``fn(item)`` for every item, in the order of ``items``.

    ``workers`` processes (at most ``cpu_count()``) each receive ``fn`` once: bind a job object to it with
    ``functools.partial`` (module-level functions only: they are sent by name). Items go out in chunks of
    ``chunksize``, read from ``items`` only as results are taken: at most ``workers * in_flight`` chunks are queued,
    in work or done but not yet taken, so memory stays flat however many items there are. A worker that dies (out
    of memory, killed) is a PipelineError, never a hang. Leaving the context (normally or on an error anywhere)
    stops the workers. workers <= 1: ``fn`` runs in this process, item by item.
    """
    workers = min(workers, cpu_count())
    if workers <= 1:
        yield map(fn, items)
        return
    chunks = _chunks(items, chunksize)
    pool = ProcessPoolExecutor(workers, multiprocessing.get_context(START_METHOD), _start_worker, (fn,))
    pending: deque[Future] = deque()

    def results() -> Iterator[R]:
        pending.extend(pool.submit(_run_chunk, c) for c in itertools.islice(chunks, workers * in_flight))
        while pending:
            try:
                done = pending.popleft().result()
            except BrokenProcessPool:
                raise PipelineError("a worker process died (out of memory? killed?); run again with fewer "
                                    "--workers") from None
            pending.extend(pool.submit(_run_chunk, c) for c in itertools.islice(chunks, 1))
            yield from done
    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
