"""The price of content keys (caches and maps keyed by the fingerprints of their sources, lib/fingerprint.py).

    python benchmarks/bench_content_keys.py --work /tmp/keys            # both parts, about 10 minutes on 2 cores
    python benchmarks/bench_content_keys.py --work /tmp/keys --parts prepare --runs 3
    python benchmarks/bench_content_keys.py --work /tmp/keys --parts resume --maps 10000

prepare  01_prepare.py --preset cpu on the 32-car sample, the code of --base (before content keys, exported with
         `git archive`) and of this tree alternately in the same run, each on a new output folder (check, split,
         cache build) and again on the same folder (the caches found current); the digesting itself timed apart
         (SHA-256 of the images' bytes as 01 has read them, the masks read again and hashed), and the check 02 makes
         when it opens the cache (a stat of each of the 1024 sources, then with every time changed: each file hashed).
hashes   MB/s of the digests hashlib offers, over the sample's 1024 files in memory (the choice of SHA-256).
resume   03_predict.py's resume check over 100,064 maps (benchmarks/bench_scale.py's `resume` stage, on its links into
         the sample): stat only, re-hash of every image, and the check before content keys.
Prints a Markdown report (benchmarks/results/content_keys.md holds one).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def export(commit: str, dest: Path) -> Path:
    """The tree of ``commit`` in ``dest`` (no git metadata touched: ``git archive``)."""
    if not (dest / "01_prepare.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_prepare(code: Path, sample: Path, out: Path) -> dict:
    """01_prepare.py of the tree ``code``: wall seconds and the check's own seconds (from its output)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(code / "01_prepare.py"), "--preset", "cpu", "--input", str(sample),
                           "--output", str(out)], cwd=code, capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{code / '01_prepare.py'} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    check = re.search(r"checked \d+ training images .*\(([\d.]+)s\)", proc.stdout)
    return {"wall_s": wall, "check_s": float(check.group(1)) if check else None,
            "rebuilt": "rebuilding" in proc.stdout or "caching" in proc.stdout}


def part_prepare(work: Path, sample: Path, base: str, runs: int) -> dict:
    trees = {"before": export(base, work / "base"), "content keys": ROOT}
    results: dict = {name: {"new": [], "again": []} for name in trees}
    for r in range(runs):
        for name, code in trees.items():  # alternately, so that the load of the other engineers hits both
            out = work / "prepare" / f"{name.replace(' ', '_')}_{r}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            results[name]["new"].append(run_prepare(code, sample, out))
            results[name]["again"].append(run_prepare(code, sample, out))
            print(f"prepare run {r} {name}: {results[name]['new'][-1]} then {results[name]['again'][-1]}", flush=True)
    results["digest"] = digest_cost(sample)
    results["open_check"] = open_check(sample, work / "prepare" / f"content_keys_{runs - 1}")
    return results


def digest_cost(sample: Path, repeats: int = 3) -> dict:
    """Seconds 01's check adds: SHA-256 of every image's bytes (already read), every mask read again and hashed."""
    from lib import fingerprint
    images = sorted((sample / "train").glob("*.jpg"))
    masks = sorted((sample / "train_masks").glob("*"))
    data = [p.read_bytes() for p in images]
    best = {"images_hash_s": float("inf"), "masks_read_hash_s": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        for d in data:
            fingerprint.digest_bytes(d)
        best["images_hash_s"] = min(best["images_hash_s"], time.perf_counter() - start)
        start = time.perf_counter()
        for m in masks:
            fingerprint.of_path(m)
        best["masks_read_hash_s"] = min(best["masks_read_hash_s"], time.perf_counter() - start)
    return best | {"images": len(images), "image_mb": sum(map(len, data)) / 1e6, "masks": len(masks),
                   "mask_mb": sum(m.stat().st_size for m in masks) / 1e6}


def hash_speeds(sample: Path, repeats: int = 3) -> dict:
    """MB/s of hashlib's digests over the sample's images and masks, in memory (best of ``repeats``, one core)."""
    import hashlib
    paths = sorted((sample / "train").glob("*.jpg")) + sorted((sample / "train_masks").glob("*"))
    data = [p.read_bytes() for p in paths]
    total = sum(map(len, data))
    speeds = {}
    for name in ("sha256", "sha1", "blake2b", "md5", "blake2s"):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for d in data:
                hashlib.new(name, d).hexdigest()
            best = min(best, time.perf_counter() - start)
        speeds[name] = total / best / 1e6
    return {"files": len(data), "mb": total / 1e6, "mb_per_s": speeds}


def open_check(sample: Path, out: Path, repeats: int = 3) -> dict:
    """The check 02 (and 03, 04) makes on opening the truth cache: every recorded source stat-ed; then with every
    recorded time changed, so that each file is hashed."""
    from lib import cache
    record = json.loads((out / "cache" / "truth" / "meta.json").read_text())["sources"]
    shifted = {**record, "files": {k: [v[0], v[1] + 1, v[2]] for k, v in record["files"].items()}}
    times = {}
    for name, rec in (("stat_s", record), ("rehash_s", shifted)):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            changed = cache.Sources(sample).changed(rec)
            best = min(best, time.perf_counter() - start)
            assert changed == [], changed
        times[name] = best
    return times | {"sources": len(record["files"])}


def report(results: dict, args, commit: str, base: str) -> str:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    lines = [f"commit {commit} (content keys) against {base} (before); {cpu.split(':', 1)[-1].strip()}, "
             f"{os.cpu_count()} CPUs shared with other work (load {os.getloadavg()[0]:.2f} at the end)",
             f"command: python benchmarks/bench_content_keys.py {' '.join(sys.argv[1:])}", ""]
    if "prepare" in results:
        pr = results["prepare"]
        lines += ["| 01_prepare.py --preset cpu, 32 cars | before: s (each run) | content keys: s (each run) | "
                  "ratio of medians |", "|---|---|---|---|"]
        for kind, label in (("new", "new output folder"), ("again", "again, caches current")):
            for field, what in (("wall_s", "whole run"), ("check_s", "its check of 512 pairs")):
                b = sorted(r[field] for r in pr["before"][kind])
                n = sorted(r[field] for r in pr["content keys"][kind])
                lines.append(f"| {label}: {what} | {', '.join(f'{x:.1f}' for x in b)} | "
                             f"{', '.join(f'{x:.1f}' for x in n)} | {n[len(n) // 2] / b[len(b) // 2]:.3f} |")
        d, o = pr["digest"], pr["open_check"]
        lines += ["", f"digesting in 01's check: SHA-256 of {d['images']} images' bytes ({d['image_mb']:.1f} MB) "
                      f"{d['images_hash_s']:.3f} s; {d['masks']} masks read again and hashed ({d['mask_mb']:.1f} MB) "
                      f"{d['masks_read_hash_s']:.3f} s (one core, best of 3)",
                  f"02 opening the cache: {o['sources']} sources stat-ed {o['stat_s'] * 1e3:.1f} ms; every time "
                  f"changed (each file hashed) {o['rehash_s'] * 1e3:.0f} ms"]
    if "hashes" in results:
        h = results["hashes"]
        lines += ["", f"digest speeds over the sample's {h['files']} files ({h['mb']:.1f} MB, in memory, one core): "
                      + ", ".join(f"{k} {v:.0f} MB/s" for k, v in h["mb_per_s"].items())]
    if "resume" in results:
        rs = results["resume"]
        lines += ["", f"| 03's resume check over {rs['maps']} maps ({rs['distinct_images']} distinct images behind the "
                      "links) | seconds (each run) | us per map | ratio to before |", "|---|---|---|---|"]
        before = rs["before (header size, PIL)"]["us_per_map"]
        for name in ("before (header size, PIL)", "stat only (nothing changed)", "re-hash (every time differs)"):
            r = rs[name]
            lines.append(f"| {name} | {', '.join(f'{s:.2f}' for s in r['seconds'])} | {r['us_per_map']:.1f} | "
                         f"{r['us_per_map'] / before:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (outputs, links, maps)")
    parser.add_argument("--sample", type=Path, default=ROOT.parent / "shared" / "carvana_sample")
    parser.add_argument("--parts", default="prepare,hashes,resume")
    parser.add_argument("--runs", type=int, default=3, help="01_prepare.py runs of each code")
    parser.add_argument("--maps", type=int, default=0, help="test maps for the resume check (0: all 100,064)")
    parser.add_argument("--base", default="", help="the commit before content keys (default: merge-base with main)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sample = args.sample.resolve()
    base = args.base or git("merge-base", "HEAD", "main")
    commit = git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no")
                                                     else "")
    saved = work / "content_keys.json"  # every part's latest figures (the report shows those of this run)
    every = json.loads(saved.read_text()) if saved.exists() else {}
    results = {}
    for part in args.parts.split(","):
        if part == "prepare":
            results[part] = part_prepare(work, sample, base, args.runs)
        elif part == "hashes":
            results[part] = hash_speeds(sample)
        elif part == "resume":
            import bench_scale
            if not (work / "sample").exists():
                (work / "sample").symlink_to(sample)
            start = time.perf_counter()
            bench_scale.build_input(work / "sample", work / "input")
            print(f"resume: links built in {time.perf_counter() - start:.1f}s", flush=True)
            results[part] = bench_scale.stage_resume(work, n=args.maps or None)
        else:
            raise SystemExit(f"--parts: unknown part {part!r}")
        saved.write_text(json.dumps(every | results, indent=2))
    print(report(results, args, commit, git("rev-parse", "--short", base)))


if __name__ == "__main__":
    main()
