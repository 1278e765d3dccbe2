"""Shared pytest fixtures: the project root on sys.path and the real Carvana sample.

The real sample (32 cars, full-size JPEGs and GIF masks) lives beside the project:
``<x>/main`` is this repository and ``<x>/shared/carvana_sample`` the data. Set ``CARVANA_SAMPLE``
to use another folder. Tests that need it are skipped when it is absent.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so `import lib` works however pytest is started
    sys.path.insert(0, str(ROOT))

SAMPLE_ENV = "CARVANA_SAMPLE"


def sample_dir() -> Path:
    """Where the real Carvana sample should be: $CARVANA_SAMPLE, else ../shared/carvana_sample."""
    override = os.environ.get(SAMPLE_ENV)
    return Path(override) if override else ROOT.parent / "shared" / "carvana_sample"


@pytest.fixture(scope="session")
def carvana_sample() -> Path:
    """Folder holding the real sample's ``train/`` and ``train_masks/``; skips the test when absent.

    An explicit $CARVANA_SAMPLE that does not exist is an error, not a skip.
    """
    path = sample_dir()
    if not (path / "train_masks").is_dir():
        if os.environ.get(SAMPLE_ENV):
            pytest.fail(f"${SAMPLE_ENV}={path} has no train_masks/ folder")
        pytest.skip(f"real Carvana sample not found at {path} (set ${SAMPLE_ENV} to its folder)")
    return path


PYTHON = sys.executable
# Python's own warning filters (the docs' "default warning filter"): what a script run by `python` starts with. Inside
# a test pytest records warnings instead of printing them; a stage run in the test process prints them to its stderr
# as it would on its own.
_PYTHON_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                           ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                           ("ignore", ResourceWarning, None)]


class _Timeout(BaseException):
    """Raised in a stage run in the test process when it runs past its timeout (a BaseException: no stage's
    ``except Exception`` turns it into a message)."""


def run_script(script: str, *args, check: bool = True, timeout: float = 600,
               process: bool = False) -> subprocess.CompletedProcess:
    """Run a numbered stage script as a user would; returns the finished run (returncode, stdout and stderr text).

    It runs in this process (its imports are already done: seconds saved per run), as ``python script args`` would
    in ROOT, with every global it sets put back afterwards (``_Globals``). ``process=True`` starts a real process
    instead, for the few tests that need one of their own (a fork-safety or import check); tests that kill, stop or
    signal a run start it with ``subprocess`` or ``start_stopped`` themselves."""
    argv = [str(ROOT / script), *map(str, args)]
    if process:
        proc = subprocess.run([PYTHON, *argv], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    else:
        proc = _run_here(argv, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _run_here(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python *argv`` in this process: runpy with sys.argv set, cwd ROOT, file descriptors 1 and 2 (and what forked
    workers write there) captured; SystemExit gives the return code, any other exception code 1 with its traceback
    on stderr, as python prints it."""
    saved = _Globals()
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    fds = os.dup(1), os.dup(2)
    old_alarm = signal.signal(signal.SIGALRM, _raise_timeout)
    code, timed_out = 0, False
    try:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        # as python sets them up for a pipe: stdout block-buffered, stderr line-buffered, both UTF-8
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, module in reversed(_PYTHON_WARNING_FILTERS):
                warnings.filterwarnings(action, category=category, module=module or "")
            warnings.showwarning = _show_warning
            os.chdir(ROOT)
            sys.argv = list(argv)
            try:
                runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as e:
                code = _exit_code(e.code)
            except _Timeout:
                timed_out = True
            except BaseException:  # what python prints for an uncaught exception (KeyboardInterrupt too)
                traceback.print_exc()
                code = 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        for stream in (sys.stdout, sys.stderr):
            if stream not in (saved.stdout, saved.stderr):
                stream.close()  # flushes; closefd=False keeps the descriptor
        sys.stdout, sys.stderr = saved.stdout, saved.stderr
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        saved.restore()
    texts = []
    for f in (out, err):
        f.seek(0)
        texts.append(f.read().decode("utf-8", errors="replace"))
        f.close()
    if timed_out:
        raise subprocess.TimeoutExpired([PYTHON, *argv], timeout, texts[0], texts[1])
    return subprocess.CompletedProcess([PYTHON, *argv], code, texts[0], texts[1])


def _raise_timeout(signum, frame) -> None:
    raise _Timeout()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _exit_code(code) -> int:
    """The process exit status python gives for ``sys.exit(code)`` (a message: printed to stderr, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


class _Globals:
    """What a stage run changes in its process, taken before it and put back after it, so that runs in the test
    process stay as independent as separate processes: sys.argv, the working folder, the environment (params'
    MAX_IMAGE_MP_ENV among it), params.GIVEN and params.RUN, torch's thread count and random generators (and numpy's
    and Python's), lib.runtime.JOINED, the signal handlers."""

    def __init__(self):
        import random

        import numpy as np
        import torch

        import params
        self.stdout, self.stderr = sys.stdout, sys.stderr
        self.argv, self.cwd, self.environ = list(sys.argv), os.getcwd(), dict(os.environ)
        self.given, self.run = dict(params.GIVEN), dict(params.RUN)
        self.threads = torch.get_num_threads()
        self.rng = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
        self.joined = getattr(sys.modules.get("lib.runtime"), "JOINED", False)
        self.handlers = {s: signal.getsignal(s) for s in signal.valid_signals() if signal.getsignal(s) is not None}

    def restore(self) -> None:
        import random

        import numpy as np
        import torch

        import params
        sys.argv = self.argv
        os.chdir(self.cwd)
        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        params.GIVEN.clear()
        params.GIVEN.update(self.given)
        params.RUN.clear()
        params.RUN.update(self.run)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.random.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        random.setstate(self.rng[2])
        if "lib.runtime" in sys.modules:
            sys.modules["lib.runtime"].JOINED = self.joined
        for s, handler in self.handlers.items():
            if signal.getsignal(s) is not handler:
                signal.signal(s, handler)


STOP_AT = ROOT / "tests" / "stop_at.py"


def stop_env(at: str, name: str | None = None, calls: int = 1, marker: Path | None = None) -> dict[str, str]:
    """The environment that makes ``tests/stop_at.py`` stop its process after the ``calls``-th call of ``at``."""
    env = {**os.environ, "STOP_AT": at, "STOP_CALLS": str(calls)}
    env.update({"STOP_NAME": name} if name else {})
    env.update({"STOP_FILE": str(marker)} if marker else {})
    return env


def start_stopped(script: str, *args, at: str, name: str | None = None, calls: int = 1,
                  log: Path | None = None) -> subprocess.Popen:
    """``script`` in a process of its own that stops itself (SIGSTOP) after the ``calls``-th call of ``at``
    (``module:function``; only calls whose first argument is named ``name`` count when it is given); returns once it
    has stopped, the moment a test kills it or runs a second process beside it. Its output goes to ``log``."""
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen([PYTHON, str(STOP_AT), str(ROOT / script), *map(str, args)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env=stop_env(at, name, calls))
    finally:
        if log:
            out.close()
    wait_stopped(proc.pid, proc)
    return proc


def wait_stopped(pid: int, proc: subprocess.Popen | None = None) -> None:
    """Return once process ``pid`` is stopped (its state in /proc is T); fail if it ends first. A wait on the event
    itself: however long the process takes to get there."""
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "X"
        if state == "T":
            return
        if state in ("X", "Z") or (proc is not None and proc.poll() is not None):
            raise AssertionError(f"process {pid} ended before it reached its stop (exit "
                                 f"{proc.returncode if proc else '?'})")
        time.sleep(0.01)


# A tiny demo dataset and a split of it: small enough for CPU tests that train for seconds.
TINY = dict(n_train_cars=4, n_test_cars=1, width=240, height=160, seed=3)
TINY_FLAGS = ["--preset", "demo", "--height", "64", "--width", "96", "--n-folds", "2", "--workers", "0",
              "--batch-size", "8", "--epochs", "2", "--predict-batch-size", "16", "--val-every", "1", "--jobs", "1"]


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """torch's thread count as it was before each test: a test that pins it (test_tiles: one thread for a tolerance)
    must not leak it into the stage runs of later tests, which run in this process and are compared bit for bit with
    runs in a process of their own (a resumed training against a straight one)."""
    import torch
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _flags_given_kept():
    """params.GIVEN and params.RUN (the flags the last parse saw, which repair commands repeat) as they were before
    each test: a test that parses a command line must not put its flags into a later test's repair commands."""
    import params
    given, run = dict(params.GIVEN), dict(params.RUN)
    yield
    params.GIVEN.clear()
    params.GIVEN.update(given)
    params.RUN.clear()
    params.RUN.update(run)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """Input root with a tiny synthetic demo dataset (read-only for tests: copy before changing)."""
    from demo import cars
    root = tmp_path_factory.mktemp("tiny") / "input"
    cars.generate(root, workers=1, **TINY)
    return root


@pytest.fixture(scope="session")
def tiny_prepared(tiny_demo, tmp_path_factory) -> Path:
    """Output folder with folds.csv and the 64x96 cache of ``tiny_demo`` (read-only for tests)."""
    out = tmp_path_factory.mktemp("tiny_out")
    run_script("01_prepare.py", "--input", tiny_demo, "--output", out, *TINY_FLAGS)
    return out


# The trained run the reliability tests share (01 -> 02 --fold all -> 03 on the tiny demo at 32 x 64, one epoch): built
# once per session; tests copy it (test_failures.clone) before they change anything.
H, W = 32, 64  # network size of the trained fixture
FLAGS = [*TINY_FLAGS, "--height", str(H), "--width", str(W), "--epochs", "1", "--tta", "none",
         "--predict-batch-size", "2"]
EXPERIMENT = "demo"  # the demo preset's


@pytest.fixture(scope="session")
def trained(tiny_demo, tmp_path_factory):
    """The trained run: root (input, read-only), out, run, reference (test maps moved aside), ids, predict."""
    import shutil
    from types import SimpleNamespace
    from lib import files, inputs
    base = tmp_path_factory.mktemp("reliability")
    root, out = base / "in put", base / "out put"
    shutil.copytree(tiny_demo, root)
    args = ["--input", root, "--output", out, *FLAGS]
    run_script("01_prepare.py", *args)
    run_script("02_train.py", "--fold", "all", *args)
    # another encoder, decoder and size on the command line on purpose: 03 rebuilds every model from its checkpoint
    proc = run_script("03_predict.py", *args, "--encoder", "resnet34", "--decoder-channels", "256,128,64,32,16",
                      "--height", "128", "--width", "192")
    run = files.run_dir(out, EXPERIMENT)
    reference = base / "reference_probs"
    shutil.move(run / files.TEST_PROBS, reference)
    test_ids = inputs.read_sample_submission(root)
    return SimpleNamespace(root=root, out=out, run=run, reference=reference, ids=test_ids, predict=proc)


# --- two tiers: `make test-quick` runs the tests not marked slow (pytest -m "not slow"), `make test` runs all ---
# The rule: a test is slow when it uses a finished tiny run or the real sample (the fixtures below, directly or through
# another fixture), or starts processes of its own (the modules in SLOW_MODULES), or is marked slow by hand.
SLOW_FIXTURES = {"tiny_demo", "tiny_prepared", "trained", "carvana_sample"}
SLOW_MODULES = {"test_distributed.py", "test_locks.py"}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: uses a tiny finished run, the real sample or processes of its own "
                                       "(left out by make test-quick)")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
