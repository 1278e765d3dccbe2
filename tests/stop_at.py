"""Run a stage script that stops its own process (SIGSTOP) right after the n-th call of one function: the point at
which a test kills it, or holds it while a second run tries the same folder, however fast or slow the machine.

    STOP_AT=lib.train:write_checkpoint STOP_NAME=last.pt STOP_CALLS=1 python tests/stop_at.py 02_train.py ARGS...

STOP_AT names the function as ``module:attribute`` (the module whose global the stage code looks up when it calls
it); STOP_NAME, when given, counts only calls whose first argument is a path of that name; STOP_CALLS is n (default
1). Before it stops, the process writes its pid to STOP_FILE when that is set (a test that did not start the process
itself, e.g. a torchrun worker's, finds it there). Under torchrun only rank 0 stops. ``conftest.start_stopped``
starts it and returns once the process has stopped.
"""
from __future__ import annotations

import functools
import importlib
import os
import runpy
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stop_here() -> None:
    """Write this process's pid to $STOP_FILE (renamed into place: a reader sees all of it or nothing), then stop."""
    marker = os.environ.get("STOP_FILE")
    if marker:
        tmp = Path(f"{marker}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(marker)
    os.kill(os.getpid(), signal.SIGSTOP)


def stopping(function, calls: int, name: str | None):
    """``function``, stopping the process after its ``calls``-th counted call has returned."""
    count, lock = 0, threading.Lock()

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        nonlocal count
        result = function(*args, **kwargs)
        if name is None or (args and Path(args[0]).name == name):
            with lock:
                count += 1
                reached = count == calls
            if reached:
                stop_here()
        return result
    return wrapper


def main() -> None:
    sys.path.insert(0, str(ROOT))
    if os.environ.get("RANK", "0") == "0":
        module_name, attribute = os.environ["STOP_AT"].split(":")
        module = importlib.import_module(module_name)
        setattr(module, attribute, stopping(getattr(module, attribute), int(os.environ.get("STOP_CALLS", "1")),
                                            os.environ.get("STOP_NAME")))
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
