"""Shared pytest fixtures: the project root on sys.path and the real Carvana sample.

The real sample (32 cars, full-size JPEGs and GIF masks) lives beside the project:
``<x>/main`` is this repository and ``<x>/shared/carvana_sample`` the data. Set ``CARVANA_SAMPLE``
to use another folder. Tests that need it are skipped when it is absent.
"""

from __future__ import annotations

import os
import sys
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


def run_script(script: str, *args: str, check: bool = True, timeout: float = 600) -> "subprocess.CompletedProcess":
    """Run a numbered stage script as a user would; returns the finished process (stdout+stderr text)."""
    import subprocess
    proc = subprocess.run([PYTHON, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# A tiny demo dataset and a split of it: small enough for CPU tests that train for seconds.
TINY = dict(n_train_cars=4, n_test_cars=1, width=240, height=160, seed=3)
TINY_FLAGS = ["--preset", "demo", "--height", "64", "--width", "96", "--n-folds", "2", "--workers", "0",
              "--batch-size", "8", "--epochs", "2", "--predict-batch-size", "16", "--val-every", "1", "--jobs", "1"]


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
# once per session; tests copy it (test_reliability.clone) before they change anything.
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
