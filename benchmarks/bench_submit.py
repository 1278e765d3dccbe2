"""Benchmark 04_submit.py's encoding path end to end on synthetic probability maps.

Usage: python benchmarks/bench_submit.py [--n 2000] [--sizes 320x480,1280x1920] [--workers 2]
                                         [--chunksizes 8] [--reference-n 500] [--tmp DIR]

For each network size, writes N smooth car-like uint8 maps as PNGs (03_predict.py's format) with a
fake tuning.json into a temporary run folder (not timed), then times ``lib.submission.make_submission``,
the function 04_submit.py calls: check every PNG exists, read each, resize to 1918 x 1280 (from_net),
threshold (binarize), RLE-encode, stream into a .csv.gz through a temporary file, manifest.
Peak memory and CPU time: the process tree (this process, the forkserver and its workers) sampled from
/proc every 100 ms (sum of RSS; utime + stime) and every 500 ms (sum of PSS, which counts shared pages once).
The canonical reference runs the same path in one process with the well-known np.where encoder
(benchmarks/bench_rle.py) on the first --reference-n maps, and must give identical rows.
Targets: >= 170 images/s (the 100,064 test images in under 10 minutes) and peak < 2 GB.
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_rle import canonical_encode  # noqa: E402
from lib import files, rle, submission, testmaps, tuning as tuning_mod  # noqa: E402
from lib.geometry import ORIG_H, ORIG_W, from_net  # noqa: E402
from lib.metrics import binarize  # noqa: E402
from lib.task import BINARY  # noqa: E402

TARGET_IMAGES_PER_S = 170  # 100,064 images in 589 s
TARGET_PEAK_BYTES = 2 * 1024**3
THRESHOLD = 0.5
SPECKLE = 0.01  # fraction of pixels with a low spurious probability (1..39 of 255), as network maps have


# --- synthetic data ---
def car_map(seed: int, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 probability map of a side-view car: body, cabin, wheels, with soft edges."""
    rng = np.random.default_rng(seed)
    s = height / 1280  # geometry in full-size pixels, scaled
    canvas = np.zeros((height, width), np.uint8)
    cx, cy = width * rng.uniform(0.45, 0.55), height * rng.uniform(0.55, 0.62)
    body_w, body_h = width * rng.uniform(0.34, 0.44), height * rng.uniform(0.12, 0.17)
    cv2.ellipse(canvas, (int(cx), int(cy)), (int(body_w), int(body_h)), rng.uniform(-3, 3), 0, 360, 255, -1,
                cv2.LINE_AA)
    cabin = np.array([[cx - body_w * 0.55, cy - body_h * 0.5], [cx - body_w * 0.25, cy - body_h * 1.9],
                      [cx + body_w * 0.3, cy - body_h * 1.9], [cx + body_w * 0.6, cy - body_h * 0.5]], np.int32)
    cv2.fillPoly(canvas, [cabin], 255, cv2.LINE_AA)
    for fx in (-0.62, 0.62):
        cv2.circle(canvas, (int(cx + fx * body_w), int(cy + body_h * 0.8)), int(body_h * 0.75), 255, -1,
                   cv2.LINE_AA)
    blurred = cv2.GaussianBlur(canvas, (0, 0), max(0.8, 3 * s))  # a network's soft edge band
    speckle = (rng.random(blurred.shape) < SPECKLE) * rng.integers(1, 40, blurred.shape)  # low-level false alarms
    return cv2.add(blurred, speckle.astype(np.uint8))


def _write_one(job: tuple[Path, str, int, int, int]) -> None:
    folder, image_id, seed, height, width = job
    testmaps.write_map(folder / f"{image_id}.png", car_map(seed, height, width), (ORIG_H, ORIG_W))


def make_run(folder: Path, n: int, height: int, width: int, workers: int) -> list[str]:
    """Write n maps and a tuning.json into ``folder``; return the test ids (sample_submission order)."""
    ids = [f"{car:012x}_{view:02d}" for car in range(n // 16 + 1) for view in range(1, 17)][:n]
    probs = folder / files.TEST_PROBS
    probs.mkdir(parents=True)
    jobs = [(probs, i, k, height, width) for k, i in enumerate(ids)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_one, jobs, chunksize=32))
    tuning = tuning_mod.Tuning("bench", [0], "hflip", "none", THRESHOLD, 0.0, (height, width), (ORIG_H, ORIG_W), 0,
                               "hflip", "none", [], BINARY, [])
    tuning_mod.write(folder, tuning)
    testmaps.write_meta(probs, testmaps.MapsMeta.of(tuning))
    return ids


# --- memory ---
class TreeMemory:
    """Samples this process and its descendants (the forkserver and its workers) every ``interval`` s:
    peak summed RSS and PSS (bytes), and CPU seconds used by the tree since the start (``cpu``)."""

    def __init__(self, interval: float = 0.1, pss_every: int = 5):
        self.interval, self.pss_every, self.peak_rss, self.peak_pss = interval, pss_every, 0, 0
        self._cpu_start: dict[int, int] = {}  # ticks of the processes alive at the start
        self._cpu_last: dict[int, int] = {}  # latest ticks of every process seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu(self) -> float:
        ticks = sum(t - self._cpu_start.get(pid, 0) for pid, t in self._cpu_last.items())
        return ticks / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "TreeMemory":
        self._cpu_start = {pid: _ticks(pid) for pid in _tree(os.getpid())}
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        for k in itertools.count():
            pids = _tree(os.getpid())
            self.peak_rss = max(self.peak_rss, 1024 * sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids))
            if k % self.pss_every == 0:  # smaps_rollup walks the page tables: costly, sample it less often
                self.peak_pss = max(self.peak_pss, 1024 * sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            for pid in pids:
                ticks = _ticks(pid)
                if ticks:
                    self._cpu_last[pid] = ticks
            if self._stop.wait(self.interval):
                return


def _ticks(pid: int) -> int:
    """utime + stime of a process in clock ticks (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError):
        return 0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{task}/children").read().split()]
        except OSError:
            pass  # the process ended between listing and reading
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- the timed paths ---
def run_pipeline(folder: Path, ids: list[str], workers: int, chunksize: int) -> tuple[float, Path, TreeMemory]:
    preds = testmaps.load_predictions([(folder, 1.0)])
    out = folder / f"bench_w{workers}_c{chunksize}.csv.gz"
    with TreeMemory() as mem:
        start = time.perf_counter()
        submission.make_submission(out, preds, ids, folder / "sample_submission.csv", 0.0, workers, chunksize)
        seconds = time.perf_counter() - start
    return seconds, out, mem


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (the one-process reference)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def run_reference(folder: Path, ids: list[str]) -> tuple[float, Path]:
    """The same path in one process with the canonical np.where encoder."""
    out = folder / "reference.csv.gz"

    def codes():
        for i in ids:
            prob = testmaps.read_map(folder / files.TEST_PROBS / f"{i}.png")
            code = canonical_encode(binarize(from_net(prob, ORIG_H, ORIG_W), THRESHOLD))
            rle.validate(code, (ORIG_H, ORIG_W))
            yield code
    cpu0, start = cpu_seconds(), time.perf_counter()
    submission.write_submission(out, ids, codes(), None, expected_ids=ids)
    return time.perf_counter() - start, cpu_seconds() - cpu0, out


def rows_of(path: Path, n: int) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).split(b"\n")[1:n + 1]


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return (f"nproc {os.cpu_count()}, {model}, {platform.system()} {platform.machine()}, python "
            f"{platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_size(tmp: Path, n: int, height: int, width: int, args: argparse.Namespace) -> None:
    folder = tmp / f"{height}x{width}"
    start = time.perf_counter()
    ids = make_run(folder, n, height, width, args.workers)
    size_mb = sum(f.stat().st_size for f in (folder / files.TEST_PROBS).iterdir()) / 1e6
    print(f"\n## maps {height}x{width} -> {ORIG_W}x{ORIG_H}: {n} PNGs, {size_mb:.0f} MB, written in "
          f"{time.perf_counter() - start:.0f}s (not timed); {load()}\n")
    print("| path | workers | chunksize | images | seconds | images/s | CPU ms/image | peak tree RSS | peak tree PSS "
          "| target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    runs = []
    for chunksize in args.chunksizes:
        seconds, out, mem = run_pipeline(folder, ids, args.workers, chunksize)
        rate = n / seconds
        ok = rate >= TARGET_IMAGES_PER_S and mem.peak_pss < TARGET_PEAK_BYTES
        print(f"| lib.submission.make_submission | {args.workers} | {chunksize} | {n} | {seconds:.1f} | {rate:.0f} | "
              f"{mem.cpu / n * 1e3:.2f} | {mem.peak_rss / 2**20:.0f} MiB | {mem.peak_pss / 2**20:.0f} MiB | "
              f"{'met' if ok else 'MISSED'} (>= {TARGET_IMAGES_PER_S}/s, < 2 GiB) |", flush=True)
        runs.append((seconds, out))
    m = min(args.reference_n, n)
    seconds, cpu, ref = run_reference(folder, ids[:m])
    print(f"| canonical np.where, one process | 1 | - | {m} | {seconds:.1f} | {m / seconds:.0f} | {cpu / m * 1e3:.2f} "
          f"| - | - | reference |")
    same = all(rows_of(out, m) == rows_of(ref, m) for _, out in runs)
    first = runs[0][1]
    numbers = np.mean([len(r.split(b",")[1].split()) for r in rows_of(first, n)])
    print(f"\nrows identical to the reference on the first {m} images: {'yes' if same else 'NO'}; "
          f"{numbers:.0f} RLE numbers per row; submission {first.stat().st_size / 1e6:.1f} MB gzipped "
          f"({first.stat().st_size / n / 1e3:.1f} kB/image); {load()}")
    best = min(s for s, _ in runs)
    print(f"projected for the 100,064 test images at the best measured rate: {100_064 / (n / best) / 60:.1f} min")
    if not same:
        raise SystemExit("error: the pipeline's rows differ from the canonical reference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic maps per size")
    parser.add_argument("--sizes", default="320x480,1280x1920", help="network sizes HxW, comma separated")
    parser.add_argument("--workers", type=int, default=2, help="encoding processes (p.workers)")
    parser.add_argument("--chunksizes", default="8", help="imap chunk sizes to time, comma separated")
    parser.add_argument("--reference-n", type=int, default=500, help="maps for the one-process canonical reference")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the synthetic maps (default: system temp)")
    args = parser.parse_args(argv)
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    args.chunksizes = [int(c) for c in args.chunksizes.split(",")]
    return args


def main(args: argparse.Namespace) -> None:
    print(f"# bench_submit: {' '.join(sys.argv[1:]) or '(defaults)'}\n\n{machine()}\n{load()} at the start")
    tmp = Path(tempfile.mkdtemp(prefix="bench_submit_", dir=args.tmp))
    try:
        for height, width in args.sizes:
            bench_size(tmp, args.n, height, width, args)
    finally:
        shutil.rmtree(tmp)
    print(f"\nru_maxrss of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main(parse_args())
