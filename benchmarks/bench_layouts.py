"""Issue 13's check: the real 32-car sample under other names scores as the Carvana-named copy does.

    python benchmarks/bench_layouts.py [--sample ../shared/carvana_sample] [--work /tmp/bench_layouts]
                                       [--test-cars 4] [--json benchmarks/results/layouts.json] [-- STAGE FLAGS...]

Builds two inputs from the same images (symlinks) and the same held-out cars:
  carvana/  train/<car>_<NN>.jpg, train_masks/<car>_<NN>_mask.gif, test/ + test_masks/ (the last --test-cars cars),
            sample_submission.csv listing the test images
  photos/   train/photo_<CC><NN>.jpg (car index CC in sorted order, view NN), masks train_masks/photo_<CC><NN>.png with
            values 0/255, test/ + test_masks/ the same way, no sample_submission.csv
and runs 01 -> 02 (every fold) -> 03 -> 04 --baselines --score on each with the same settings: photos/ twice, with
--group-regex '^photo_(\\d\\d)' (its groups are the cars, as Carvana's default rule makes them) and with the default
rule (one group per image). Prints one row per run: out-of-fold and test Dice of the model and of the global
average mask.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from lib import files, inputs  # noqa: E402

SETTINGS = ["--preset", "cpu", "--height", "64", "--width", "96", "--epochs", "1", "--val-every", "1",
            "--n-folds", "2", "--workers", "2", "--tta", "none"]


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def build(sample: Path, work: Path, test_cars: int) -> tuple[Path, Path]:
    """The two inputs (carvana/, photos/) under ``work``; returns their folders."""
    ids = sorted(p.stem for p in (sample / files.TRAIN).glob("*.jpg"))
    cars = sorted({i.rsplit("_", 1)[0] for i in ids})
    held = set(cars[-test_cars:])
    carvana, photos = work / "carvana", work / "photos"
    listed = []
    for image_id in ids:
        car, view = image_id.rsplit("_", 1)
        test = car in held
        images, masks = (files.TEST, files.TEST_MASKS) if test else (files.TRAIN, files.TRAIN_MASKS)
        gif = sample / files.TRAIN_MASKS / files.mask_name(image_id)
        link(sample / files.TRAIN / f"{image_id}.jpg", carvana / images / f"{image_id}.jpg")
        link(gif, carvana / masks / files.mask_name(image_id))
        photo = f"photo_{cars.index(car):02d}{view}"
        link(sample / files.TRAIN / f"{image_id}.jpg", photos / images / f"{photo}.jpg")
        png = photos / masks / f"{photo}.png"
        if not png.exists():
            png.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(inputs.read_mask(gif).astype("uint8") * 255).save(png)
        if test:
            listed.append(f"{image_id}.jpg")
    (carvana / files.SAMPLE_SUBMISSION).write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in listed))
    return carvana, photos


def run_pipeline(name: str, input_dir: Path, out: Path, flags: list[str]) -> dict:
    """01 -> 04 on one input; the comparison table's Dice figures and the seconds it took."""
    args = ["--input", str(input_dir), "--output", str(out), "--experiment", "bench", *flags]
    start = time.perf_counter()
    env = dict(os.environ, TQDM_DISABLE="1")
    printed = []
    for script, extra in (("01_prepare.py", []), ("02_train.py", ["--fold", "all"]), ("03_predict.py", []),
                          ("04_submit.py", ["--baselines", "--score"])):
        proc = subprocess.run([sys.executable, str(ROOT / script), *args, *extra], capture_output=True, text=True,
                              cwd=ROOT, env=env)
        if proc.returncode:
            raise SystemExit(f"{name}: {script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        if script == "01_prepare.py":
            printed = [ln for ln in proc.stdout.splitlines() if ln.startswith(("checked", "groups:", "test:"))]
    table = (out / "bench" / files.COMPARISON).read_text()
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] != "system":
            rows[cells[0]] = {"oof": cells[3], "test": cells[4]}
    return {"run": name, "seconds": round(time.perf_counter() - start, 1), "prepare": printed, "table": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=Path, default=ROOT.parent / "shared" / "carvana_sample")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_layouts"))
    ap.add_argument("--test-cars", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("flags", nargs="*", help="stage flags instead of the default settings")
    a = ap.parse_args()
    flags = a.flags or SETTINGS
    carvana, photos = build(a.sample, a.work, a.test_cars)
    results = [run_pipeline("carvana names", carvana, a.work / "out_carvana", flags),
               run_pipeline("photo names, --group-regex cars", photos, a.work / "out_photos_groups",
                            [*flags, "--group-regex", r"^photo_(\d\d)"]),
               run_pipeline("photo names, default groups", photos, a.work / "out_photos", flags)]
    with open(a.work / "submission_heads.csv", "w", newline="") as f:  # the first rows, to look at
        writer = csv.writer(f)
        for out in ("out_carvana", "out_photos"):
            with gzip.open(a.work / out / "bench" / "submission.csv.gz", "rt") as g:
                for _, line in zip(range(3), g):
                    writer.writerow([out, line.strip()[:80]])
    for r in results:
        sub = next(v for k, v in r["table"].items() if k.startswith("submission"))
        base = r["table"]["average mask, global"]
        print(f"{r['run']:<34} model OOF {sub['oof']} test {sub['test']} | global average mask OOF {base['oof']} "
              f"test {base['test']} | {r['seconds']:.0f}s")
        for line in r["prepare"]:
            print(f"    {line}")
    if a.json:
        a.json.write_text(json.dumps({"flags": flags, "test_cars": a.test_cars, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
