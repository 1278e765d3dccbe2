"""One writer per stage folder, and waits that say who they wait for (issue 24, items 6 and 13).

03 holds its experiment's lock (files.PREDICT_LOCK) exclusively, except separate --shard jobs, which share it; 04
holds its experiment's submit lock (files.SUBMIT_LOCK) and a shared hold on every prediction folder's lock; the cache
lock is waited for, up to --lock-timeout seconds. Nothing here depends on timing: a test starts the first process,
waits until its lock file records it, stops it (SIGSTOP), runs the second, and lets the first go on (SIGCONT) or
kills it in a finally.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import PYTHON, ROOT, run_script
from lib import files
from test_failures import EXPERIMENT, FLAGS, clone, digest, error_line  # noqa: F401

HOST = socket.gethostname()


def args_for(t, out: Path, *extra: str) -> list:
    return ["--input", t.root, "--output", out, *FLAGS, *extra]


def start(script: str, *args, log: Path) -> subprocess.Popen:
    """``script`` started as a user would, its output to ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen([PYTHON, str(ROOT / script), *map(str, args)], cwd=ROOT, stdout=f,
                                stderr=subprocess.STDOUT)


def wait_until_holding(proc: subprocess.Popen, lock: Path, log: Path) -> None:
    """Return once ``lock`` records ``proc`` as a holder; fail if ``proc`` ends first."""
    while proc.poll() is None:
        try:
            if any(line.split()[:1] == [str(proc.pid)] for line in lock.read_text().splitlines()):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{proc.args} ended (exit {proc.returncode}) before it held {lock}:\n{log.read_text()}")


def finish(proc: subprocess.Popen, log: Path) -> None:
    """Let a stopped process go on and check that it ends well."""
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=600) == 0, log.read_text()


def stop_for_good(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def no_locks(folder: Path) -> bool:
    return not [p for p in folder.rglob("*.lock")]


def maps(folder: Path) -> dict[str, str]:
    return {k: v for k, v in digest(folder).items() if k.endswith(".png")}


# --- item 6: one writer per experiment folder ---
def test_a_second_03_is_refused_naming_the_holder_and_runs_once_it_has_finished(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    run, log = files.run_dir(out, EXPERIMENT), tmp_path / "first.log"
    first = start("03_predict.py", *args_for(trained, out, "--tta", "hflip"), log=log)  # other maps than FLAGS' none
    try:
        wait_until_holding(first, run / files.PREDICT_LOCK, log)
        first.send_signal(signal.SIGSTOP)
        before = digest(run)
        second = run_script("03_predict.py", *args_for(trained, out, "--tta", "none", "--replace"), check=False)
        line = error_line(second)
        assert second.stderr.count("\n") == 1, second.stderr
        assert line.startswith(f"error: {run}: the prediction folder of {EXPERIMENT}") and "in use by another process" \
            in line and f"(pid {first.pid} on host {HOST} since " in line and "03_predict.py)" in line
        command = line.split("then run ")[1]  # the command to run after it: the refused one
        assert "03_predict.py --replace " in command and "--tta none" in command, line
        assert digest(run) == before  # nothing changed: no tuning, no params, no map deleted
        finish(first, log)
    finally:
        stop_for_good(first)
    probs = run / files.TEST_PROBS
    assert json.loads((probs / files.PROBS_META).read_text())["tta"] == "hflip"
    run_script("03_predict.py", *args_for(trained, out, "--tta", "none", "--replace"))  # now it runs
    assert json.loads((probs / files.PROBS_META).read_text())["tta"] == "none"
    assert maps(probs) == maps(trained.reference)  # the hflip maps were all replaced: no mix
    run_script("04_submit.py", *args_for(trained, out))
    assert no_locks(out)  # every lock file went with its last holder


def test_shards_of_one_tuning_run_side_by_side_while_a_replace_and_a_second_tuning_are_refused(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    run, log = files.run_dir(out, EXPERIMENT), tmp_path / "shard0.log"
    run_script("03_predict.py", *args_for(trained, out, "--tune-only"))
    shard0 = start("03_predict.py", *args_for(trained, out, "--shard", "0/2"), log=log)
    try:
        wait_until_holding(shard0, run / files.PREDICT_LOCK, log)
        shard0.send_signal(signal.SIGSTOP)
        shard1 = run_script("03_predict.py", *args_for(trained, out, "--shard", "1/2"))  # shares the lock
        assert "shard 1/2 done" in shard1.stdout
        for extra in (["--replace"], ["--retune"]):  # would delete maps or rewrite tuning.json under shard 0
            before = digest(run)
            line = error_line(run_script("03_predict.py", *args_for(trained, out, *extra), check=False))
            assert "in use by another process" in line and f"(pid {shard0.pid} on host {HOST}" in line, line
            assert digest(run) == before
        line = error_line(run_script("04_submit.py", *args_for(trained, out), check=False))
        assert "test maps missing" in line  # 04 reads beside the shards (and finds shard 0's maps missing)
        finish(shard0, log)
    finally:
        stop_for_good(shard0)
    assert maps(run / files.TEST_PROBS) == maps(trained.reference)
    assert no_locks(out)


def test_a_second_04_is_refused_while_one_writes_the_experiments_files(trained, tmp_path):
    out = clone(trained, tmp_path)
    run, log = files.run_dir(out, EXPERIMENT), tmp_path / "first.log"
    first = start("04_submit.py", *args_for(trained, out, "--baselines", "--score"), log=log)
    try:
        wait_until_holding(first, run / files.SUBMIT_LOCK, log)
        wait_until_holding(first, run / files.PREDICT_LOCK, log)  # taken right after: its hold on the maps
        first.send_signal(signal.SIGSTOP)
        before = digest(run)
        second = run_script("04_submit.py", *args_for(trained, out, "--submission", "other"), check=False)
        line = error_line(second)
        assert second.stderr.count("\n") == 1, second.stderr
        assert line.startswith(f"error: {run}: the submission of {EXPERIMENT} is in use by another process (pid "
                               f"{first.pid} on host {HOST} since ") and "04_submit.py)" in line, line
        command = line.split("then run ")[1]
        assert "04_submit.py " in command and "--submission other" in command, line
        assert digest(run) == before
        # and no 03 tunes or replaces maps while 04 reads them
        line = error_line(run_script("03_predict.py", *args_for(trained, out, "--replace"), check=False))
        assert f"(pid {first.pid} on host {HOST}" in line and "04_submit.py)" in line, line
        assert digest(run) == before
        finish(first, log)
    finally:
        stop_for_good(first)
    run_script("04_submit.py", *args_for(trained, out, "--submission", "other"))
    assert (run / "other.csv.gz").exists() and no_locks(out)


# --- item 13: a wait that says who it waits for, gives up, and takes over a lock whose holder is gone ---
HOLD = """
import os, subprocess, sys
sys.path.insert(0, {root!r})
from lib import files
with files.exclusive({lock!r}, "the cache"):
    if {orphan}:  # a process it started keeps the lock's descriptor and outlives it
        fd = next(iter(files._HELD))
        subprocess.Popen([sys.executable, "-c", "import os, time; print('orphan', os.getpid(), flush=True); "
                          "time.sleep(600)"], pass_fds=[fd], stdout=sys.stdout)
        sys.stdout.flush()
        os._exit(0)
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_cache_lock_wait_names_the_holder_gives_up_and_a_gone_holders_lock_is_taken_over(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    lock = out / "cache" / files.LOCK
    new_size = ["--height", "64", "--width", "96"]  # no cache at this size yet: 02 and 01 must build it
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), lock=str(lock), orphan=False)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        proc = run_script("02_train.py", "--fold", "0", *args_for(trained, out, *new_size, "--lock-timeout", "0.5",
                                                                   "--experiment", "bigger"), check=False)
        waiting = f"waiting for {lock}: the cache is held by another process (pid {holder.pid} on host {HOST} since "
        assert waiting in proc.stdout and "giving up after 0.5 s (--lock-timeout)" in proc.stdout, proc.stdout
        line = error_line(proc)
        assert line.startswith(f"error: {lock}: still held by another process (pid {holder.pid} on host {HOST} "
                               "since ") and "after waiting 0.5 s (--lock-timeout)" in line, line
        assert "02_train.py --fold 0 " in line.split("run ")[-1] and "--lock-timeout 0.5" in line  # the same command
        assert not (out / "bigger").exists() and not files.cache_dir(out, 64, 96).exists()  # nothing written
    finally:
        stop_for_good(holder)
    # the holder ended, but a process it started still holds the lock: stale, taken over with a note
    orphaner = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), lock=str(lock), orphan=True)],
                                stdout=subprocess.PIPE, text=True)
    orphan_pid = None
    try:
        word, orphan_pid = orphaner.stdout.readline().split()
        orphan_pid = int(orphan_pid)
        assert word == "orphan" and orphaner.wait() == 0
        recorded = int(lock.read_text().split()[0])
        assert recorded == orphaner.pid  # a dead pid of this host, while the lock is still held:
        fd = os.open(lock, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("the orphan does not hold the lock")
            except BlockingIOError:
                pass
        finally:
            os.close(fd)
        proc = run_script("01_prepare.py", *args_for(trained, out, *new_size, "--lock-timeout", "0.5"))
        assert (f"note: {lock}: its holder (pid {orphaner.pid} on host {HOST} since " in proc.stdout
                and "has ended, but a process it started still holds the lock; taking it over" in proc.stdout), \
            proc.stdout
        assert (files.cache_dir(out, 64, 96) / "images.npy").exists() and not lock.exists()
    finally:
        stop_for_good(orphaner)
        if orphan_pid:
            os.kill(orphan_pid, signal.SIGKILL)

