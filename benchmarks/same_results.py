"""Run the tiny demo through all four stages and print digests of what a re-cut must not change.

    .venv/bin/python benchmarks/same_results.py /tmp/tiny_run

The run: a 4-car synthetic demo (240 x 160, 1 test car), 2 folds of 2 epochs at 64 x 96 on the CPU, 03 with
``--tta hflip --postprocess none`` and 04 with ``--threshold 0.5``. It prints one JSON object: the SHA-256 of
folds.csv and of the submission's rows (decompressed, so that gzip's time stamp does not count), the row count and
the tuned threshold. Run it at two commits (e.g. in two clones) and compare the two lines.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--preset", "demo", "--height", "64", "--width", "96", "--n-folds", "2", "--workers", "0", "--batch-size", "8",
         "--epochs", "2", "--val-every", "1", "--jobs", "1", "--predict-batch-size", "16", "--seed", "3",
         "--tta", "hflip", "--postprocess", "none"]
DEMO = ["--demo", "--demo-train-cars", "4", "--demo-test-cars", "1", "--demo-width", "240", "--demo-height", "160"]


def stage(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / script), *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def main(base: Path) -> dict:
    where = ["--input", str(base / "input"), "--output", str(base / "output"), *FLAGS]
    stage("01_prepare.py", *DEMO, *where)
    stage("02_train.py", "--fold", "all", *where)
    stage("03_predict.py", *where)
    stage("04_submit.py", "--threshold", "0.5", *where)
    run = base / "output" / "demo"
    rows = gzip.decompress((run / "submission.csv.gz").read_bytes())
    tuning = json.loads((run / "tuning.json").read_text())
    return {"folds.csv": hashlib.sha256((base / "output" / "folds.csv").read_bytes()).hexdigest(),
            "submission_rows": hashlib.sha256(rows).hexdigest(), "rows": rows.count(b"\n") - 1,
            "tuned_threshold": tuning.get("threshold")}


if __name__ == "__main__":
    if len(sys.argv) != 2 or Path(sys.argv[1]).exists():
        sys.exit("usage: same_results.py NEW_FOLDER (it must not exist yet)")
    print(json.dumps(main(Path(sys.argv[1]))))
