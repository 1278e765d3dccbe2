"""A full-size rehearsal: the Kaggle data's counts and sizes, made of links into the real 32-car sample.

    python benchmarks/bench_scale.py --work /tmp/scale                 # every stage, about half an hour on 2 cores
    python benchmarks/bench_scale.py --work /tmp/scale --stages prepare,loader

Builds WORK/input: 5088 training pairs as 318 cars (each a sample car under a new id) and the 100,064 test ids of
the official sample_submission.csv, each a link to a sample image. Then runs the stages as a user would, each a
separate process timed with /usr/bin/time (wall seconds, peak resident memory):
  prepare  01_prepare.py at the default (full-resolution) size: time, peak memory, bytes written;
  loader   the training loader at 1280 x 1920 with augmentation, 1..N workers: images/s, per worker;
  predict  03_predict.py over 10,000 and over all 100,064 test ids at a small network size (a model trained for one
           epoch at 64 x 96), as 2 shards running side by side: images/s, peak memory of each process;
  submit   04_submit.py over the 100,064 maps: images/s, peak memory, file size, the validation it does;
  resume   03_predict.py's resume check (``testmaps.finished``) over 100,064 finished maps (written directly,
           tiny, each recording its test image's fingerprint): the stat-only path (nothing changed), the re-hash path
           (every image's time differs from the recorded one: each image read and hashed), and the check before
           content keys (each image's header size, read with PIL) for the ratio.
Prints a table per stage and writes every figure to WORK/scale.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

N_CARS, VIEWS = 318, 16
SMALL = ["--preset", "demo", "--height", "64", "--width", "96", "--n-folds", "5", "--experiment", "scale64"]


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under /usr/bin/time; its wall seconds and peak resident memory (GB). Output goes to ``log``."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n")
        out.flush()
        proc = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *map(str, cmd)], cwd=ROOT, stdout=out,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        out.write(proc.stderr)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("TIME ")][-1].split()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed (exit {proc.returncode}); see {log}")
    return {"seconds": float(line[1]), "peak_gb": int(line[2]) * 1024 / 1e9}


def started(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "a")
    out.write(f"$ {' '.join(map(str, cmd))}\n")
    out.flush()
    return subprocess.Popen(["/usr/bin/time", "-f", "TIME %e %M", *map(str, cmd)], cwd=ROOT, stdout=out,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})


def finished(proc: subprocess.Popen, log: Path) -> dict:
    _, err = proc.communicate()
    with open(log, "a") as out:
        out.write(err)
    if proc.returncode != 0:
        raise SystemExit(f"a process failed (exit {proc.returncode}); see {log}")
    line = [ln for ln in err.splitlines() if ln.startswith("TIME ")][-1].split()
    return {"seconds": float(line[1]), "peak_gb": int(line[2]) * 1024 / 1e9}


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def build_input(sample: Path, root: Path, n_test: int | None = None) -> dict:
    """WORK/input (train/, train_masks/ as 318 cars; test/ and sample_submission.csv of the official ids)."""
    sample = sample.resolve()
    cars = sorted({p.stem.rsplit("_", 1)[0] for p in (sample / "train").glob("*.jpg")})
    for d in ("train", "train_masks", "test"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for k in range(N_CARS):
        car = cars[k % len(cars)]
        new = hashlib.sha1(f"{car}/{k}".encode()).hexdigest()[:12]
        for v in range(1, VIEWS + 1):
            link = root / "train" / f"{new}_{v:02d}.jpg"
            if not link.is_symlink():
                link.symlink_to(sample / "train" / f"{car}_{v:02d}.jpg")
                (root / "train_masks" / f"{new}_{v:02d}_mask.gif").symlink_to(
                    sample / "train_masks" / f"{car}_{v:02d}_mask.gif")
    lines = (sample / "sample_submission.csv").read_text().splitlines()
    rows = lines[1:][:n_test] if n_test else lines[1:]
    images = sorted((sample / "train").glob("*.jpg"))
    for j, row in enumerate(rows):
        link = root / "test" / row.split(",")[0]
        if not link.is_symlink():
            link.symlink_to(images[j % len(images)])
    (root / "sample_submission.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return {"train_pairs": N_CARS * VIEWS, "cars": N_CARS, "test_ids": len(rows)}


def stage_prepare(work: Path, workers: int, log: Path) -> dict:
    out = work / "output"
    r = timed([sys.executable, "01_prepare.py", "--input", work / "input", "--output", out, "--workers", workers], log)
    return r | {"bytes_written": du(out)}


def stage_loader(work: Path, workers: int) -> list[dict]:
    import params
    from bench_gpu import loader_rates
    p = params.make_params(input=str(work / "input"), workers=workers)
    return loader_rates(p, list(range(1, workers + 1)), 64)


def stage_predict(work: Path, workers: int, log: Path) -> dict:
    """A one-epoch model at 64 x 96 on fold 0, tuned once, then 2 shards side by side over 10k and 100k ids."""
    out, results = work / "output", {}
    train = [sys.executable, "02_train.py", "--fold", "0", "--input", work / "input", "--output", out, *SMALL,
             "--epochs", "1", "--workers", workers]
    if not (out / "scale64" / "fold0" / "model.pt").exists():
        results["train_small_model"] = timed(train, log)
    for n, name in ((10_000, "input10k"), (None, "input")):
        root = work / name
        if n:
            build_input(work / "sample", root, n)  # the same training ids (for the tuning), the first n test ids
        # two shards side by side on this machine's cores: one torch thread and one loader worker each
        args = ["--input", root, "--output", out, *SMALL, "--folds", "0", "--workers", "1", "--threads", "1"]
        probs = out / "scale64" / "test_probs"
        if probs.exists():
            subprocess.run(["rm", "-rf", str(probs)], check=True)
        timed([sys.executable, "03_predict.py", *args, "--tune-only"], log)
        start = time.perf_counter()
        shards = [started([sys.executable, "03_predict.py", *args, "--shard", f"{k}/2"], log) for k in range(2)]
        done = [finished(s, log) for s in shards]
        wall = time.perf_counter() - start
        ids = sum(1 for _ in probs.glob("*.png"))
        results[f"ids_{ids}"] = {"wall_s": wall, "images_per_s": ids / wall, "shards": done}
    return results


def stage_submit(work: Path, workers: int, log: Path) -> dict:
    out = work / "output"
    r = timed([sys.executable, "04_submit.py", "--input", work / "input", "--output", out, *SMALL,
               "--workers", workers], log)
    path = out / "scale64" / "submission.csv.gz"
    manifest = json.loads((out / "scale64" / "submission.manifest.json").read_text())
    return r | {"file_bytes": path.stat().st_size, "rows": manifest["rows"],
                "images_per_s": manifest["rows"] / r["seconds"], "check": check_submission(path, work / "input")}


def check_submission(path: Path, root: Path) -> dict:
    """An independent check of the file: header, the ids in sample_submission.csv order, every RLE valid."""
    import gzip

    from lib import rle
    start = time.perf_counter()
    expected = [ln.split(",")[0] for ln in (root / "sample_submission.csv").read_text().splitlines()[1:]]
    with gzip.open(path, "rt") as f:
        header, *rows = f.read().splitlines()
    ids = [r.split(",", 1)[0] for r in rows]
    for r in rows:
        rle.validate(r.split(",", 1)[1], (1280, 1918))
    return {"header_ok": header == "img,rle_mask", "ids_in_order": ids == expected, "rles_valid": True,
            "empty_rows": sum(r.endswith(",") for r in rows), "seconds": time.perf_counter() - start}


def stage_resume(work: Path, repeats: int = 2, n: int | None = None) -> dict:
    """Times of ``testmaps.finished`` over the test ids of WORK/input (the first ``n`` of them if given): see the
    module docstring. Writes WORK/resume/{current,rehash}/<id>.png once (reused by later runs)."""
    import numpy as np

    from lib import fingerprint, inputs, testmaps
    from lib.fingerprint import Fingerprint
    ids, paths = inputs.check_test(work / "input")
    ids = ids[:n] if n else ids
    size = (64, 96)
    blank = testmaps.png_bytes(np.zeros(size, np.uint8), (1280, 1918))  # only the header matters to the check
    folders = {"current": work / "resume" / "current", "rehash": work / "resume" / "rehash"}
    by_target: dict[str, Fingerprint] = {}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        if sum(1 for _ in os.scandir(folder)) >= len(ids):
            continue
        start = time.perf_counter()
        for i in ids:
            target = str(paths[i].resolve())
            if target not in by_target:
                by_target[target] = fingerprint.of_path(paths[i])
            fp = by_target[target]
            if name == "rehash":  # a time that is not the image's: the check must read and hash it
                fp = Fingerprint(fp.size, fp.mtime_ns + 1, fp.digest)
            (folder / f"{i}.png").write_bytes(testmaps.png_bytes(np.zeros(size, np.uint8), (1280, 1918), fp))
        print(f"resume: wrote {len(ids)} maps in {folder} ({time.perf_counter() - start:.1f}s)", flush=True)

    def before_content_keys(folder: Path) -> set[str]:  # the check of the parent commit (lib/predict.py)
        present = {e.name for e in os.scandir(folder)}
        done = set()
        for i in ids:
            name = f"{i}.png"
            if name not in present:
                continue
            info = testmaps.header(folder / name)
            if info is not None and info[0] == size and info[1] is not None and \
                    info[1] == inputs.image_header_size(paths[i]):
                done.add(name)
        return done

    checks = {"before (header size, PIL)": lambda: before_content_keys(folders["current"]),
              "stat only (nothing changed)": lambda: testmaps.finished(folders["current"], ids, paths, size),
              "re-hash (every time differs)": lambda: testmaps.finished(folders["rehash"], ids, paths, size)}
    results = {"maps": len(ids), "map_bytes": len(blank), "distinct_images": len({str(p.resolve()) for p in
                                                                                   paths.values()})}
    for name, check in checks.items():
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            done = check()
            seconds.append(time.perf_counter() - start)
            assert len(done) == len(ids), (name, len(done))
        results[name] = {"seconds": seconds, "us_per_map": min(seconds) / len(ids) * 1e6}
        print(f"resume: {name}: {', '.join(f'{s:.2f}' for s in seconds)} s over {len(ids)} maps", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (links, outputs, logs)")
    parser.add_argument("--sample", type=Path, default=ROOT.parent / "shared" / "carvana_sample")
    parser.add_argument("--stages", default="prepare,loader,predict,submit")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "sample").exists():
        (work / "sample").symlink_to(args.sample.resolve())
    log, report_path = work / "scale.log", work / "scale.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    start = time.perf_counter()
    report["input"] = build_input(work / "sample", work / "input")
    print(f"input: {report['input']} in {time.perf_counter() - start:.1f}s; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    for stage in args.stages.split(","):
        if stage == "prepare":
            report[stage] = stage_prepare(work, args.workers, log)
        elif stage == "loader":
            report[stage] = stage_loader(work, args.workers)
        elif stage == "predict":
            report[stage] = stage_predict(work, args.workers, log)
        elif stage == "submit":
            report[stage] = stage_submit(work, args.workers, log)
        elif stage == "resume":
            report[stage] = stage_resume(work)
        else:
            raise SystemExit(f"--stages: unknown stage {stage!r}")
        print(f"{stage}: {json.dumps(report[stage])}", flush=True)
        report_path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
