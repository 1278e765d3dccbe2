"""lib.files.OrderedWriter: background writes in order; a failure stops the later ones and reaches the caller."""
from __future__ import annotations

import threading
import time

import pytest

from lib import files


def test_writes_run_in_order_off_the_calling_thread(tmp_path):
    seen, caller = [], threading.get_ident()

    def write(i):
        time.sleep(0.01 * (3 - i))  # later writes are quicker: only a real queue keeps the order
        seen.append((i, threading.get_ident() != caller))

    with files.OrderedWriter() as writer:
        for i in range(3):
            writer.submit(write, i)
    assert seen == [(0, True), (1, True), (2, True)]


def test_failed_write_skips_the_later_ones_and_is_raised_by_flush(tmp_path):
    target = tmp_path / "last.pt"
    writer = files.OrderedWriter()
    writer.submit(files.write_text_atomic, tmp_path / "model.pt", "best")

    def fail():
        raise OSError(28, "No space left on device")

    writer.submit(fail)
    writer.submit(files.write_text_atomic, target, "claims a best model that was not written")
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    assert (tmp_path / "model.pt").read_text() == "best"
    assert not target.exists()
    writer.close()  # the error was handed over once; closing is clean


def test_error_in_the_caller_still_finishes_the_writes_given_and_keeps_that_error(tmp_path):
    with pytest.raises(ValueError, match="nan loss"):
        with files.OrderedWriter() as writer:
            writer.submit(lambda: (time.sleep(0.05), files.write_text_atomic(tmp_path / "last.pt", "epoch 3")))
            raise ValueError("nan loss")
    assert (tmp_path / "last.pt").read_text() == "epoch 3"



def test_several_threads_return_each_result_and_bound_what_waits(tmp_path):
    running, most = [0], [0]
    lock = threading.Lock()

    def write(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        files.write_text_atomic(tmp_path / f"{i}.txt", str(i))
        with lock:
            running[0] -= 1
        return i, f"row {i}"

    with files.OrderedWriter(threads=2, pending=3) as writer:
        futures = []
        for i in range(8):
            futures.append(writer.submit(write, i))
            assert sum(not f.done() for f in futures) <= 3  # submit waited for the oldest beyond the bound
    assert dict(f.result() for f in futures) == {i: f"row {i}" for i in range(8)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.txt" for i in range(8)) and most[0] <= 2
