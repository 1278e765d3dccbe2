"""Folds side by side: ``02_train.py --fold all --jobs N`` trains N folds at a time, one child process each.

On a CPU, two single-threaded processes train more images per second than one process with two threads: the small
convolutions of a CPU-sized network do not keep two cores busy, and each process also augments its own batches
(benchmarks/results/recipes.md). Each child is this same command for one fold, with ``--jobs 1`` and ``--threads``
set to its share of the cores; its lines are its fold's. A failed fold stops the folds not yet started, and the
folds already running finish; the message names the command that continues it.

These are whole stage processes, not ``lib/parallel.py`` pool workers: each is a command a user could type (its own
argv, environment, exit status and printed lines), it stops on the SIGINT it is sent by saving its last finished
epoch (pool workers ignore SIGINT), and it sets up torch's threads before anything else. They share the pools'
CPU count and die with this process as their workers do.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from lib.errors import PipelineError
from lib.parallel import cpu_count, die_with_parent


def threads_each(jobs: int) -> int:
    """Each process's share of the cores this process may use (at least 1)."""
    return max(1, cpu_count() // jobs)


def train_side_by_side(script: str, argv: list[str], ks: list[int], jobs: int) -> None:
    """Run ``python script argv --fold k --jobs 1 --threads T`` for every k in ``ks``, ``jobs`` at a time (later
    flags win in argparse, so the fold's own ones override what ``argv`` says)."""
    threads = threads_each(jobs)
    env = dict(os.environ, TQDM_DISABLE="1")  # bars of several processes on one terminal garble: epoch lines only
    waiting, running, failed = list(ks), {}, []
    print(f"training folds {', '.join(map(str, ks))}: {jobs} at a time, {threads} thread(s) each", flush=True)
    try:
        while waiting or running:
            while waiting and len(running) < jobs and not failed:
                k = waiting.pop(0)
                cmd = [sys.executable, script, *argv, "--fold", str(k), "--jobs", "1", "--threads", str(threads)]
                running[k] = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)
            if failed:
                waiting.clear()
            for k, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[k]
                    if proc.returncode:
                        failed.append(k)
            time.sleep(0.2)
    except BaseException:  # Ctrl-C or SIGTERM: the children stop too (each keeps its last finished epoch)
        for proc in running.values():
            proc.send_signal(signal.SIGINT)
        for proc in running.values():
            proc.wait()
        raise
    if failed:
        folds = ",".join(map(str, sorted(failed)))
        raise PipelineError(f"fold(s) {folds} failed (the error is above); the other folds' files are kept: once it is "
                            "fixed, the same command with --resume continues (finished folds stay as they are)")
