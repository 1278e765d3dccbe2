"""Test submissions: probability maps -> full-size masks -> RLE rows in a gzipped CSV, with a manifest.

One or more prediction folders (``output/<experiment>/``, written by 03_predict.py) each hold
``tuning.json`` and ``test_probs/<id>.png`` (uint8 maps at that run's network size). For every test
id, in sample_submission.csv order, a worker process reads each folder's map, brings it to the
original size with ``geometry.from_net``, averages the folders with normalised weights (rounded to
uint8), binarizes with ``metrics.binarize`` (the same functions tuning used, so the submission's masks
are exactly the ones the out-of-fold score counted), RLE-encodes and validates. The main process
streams the rows into ``<name>.csv.gz`` under a temporary name and renames it only when every row
is in and checked; ``<name>.manifest.json`` beside it says what went in.

Memory stays bounded whatever the number of images: the workers are ``lib/parallel.py``'s, which queues at most
``IN_FLIGHT_CHUNKS`` chunks of ``CHUNKSIZE`` ids per worker, in work or finished-but-unwritten at any time, and only
RLE strings cross between processes. ``benchmarks/bench_submit.py`` measures speed and peak memory.
"""
from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lib import files, fingerprint, layout, parallel, postprocess, rle
from lib.errors import PipelineError, listing
from lib.geometry import from_net
from lib.inputs import image_header_size, read_mask, read_truth
from lib.metrics import binarize, dice, level_of
from lib.oof import at_size
from lib.progress import progress
from lib.task import BINARY, RECORD as TASK_RECORD, Task

SUFFIX, MANIFEST_SUFFIX = ".csv.gz", ".manifest.json"
HEADER = ("img", "rle_mask")
CHUNKSIZE = 8  # test ids per worker task (~40 ms of work): few messages, and the workers stay evenly busy
GZIP_LEVEL = 1  # 0.23 ms and 4.3 kB per full-size row; level 6: 1.2 ms (the writer would be the bottleneck), 3.9 kB
WRITE_BATCH = 256  # rows joined per gzip write
MAX_LISTED = 10  # missing files named in an error before "... and N more"
PREDICT_STAGE = "03_predict.py"


# --- names ---
def submission_path(run: Path, name: str) -> Path:
    """``run/<name>.csv.gz``: ``name`` is the stem (``--submission``)."""
    if not name or "/" in name or name.endswith((".csv", ".gz")):
        raise PipelineError(f"--submission {name!r}: give a bare file name stem such as 'submission'")
    return run / f"{name}{SUFFIX}"


def manifest_path(path: Path) -> Path:
    """``x.csv.gz`` -> ``x.manifest.json`` beside it."""
    return path.with_name(path.name[: -len(SUFFIX)] + MANIFEST_SUFFIX)


# --- prediction folders ---
@dataclass(frozen=True)
class Prediction:
    """One prediction folder and its share of the ensemble."""
    folder: Path
    weight: float  # normalised: the weights of an ensemble sum to 1
    weight_given: float  # as given on the command line
    tuning: dict  # tuning.json of the folder

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) network size of the folder's test_probs PNGs."""
        return int(self.tuning["size"][0]), int(self.tuning["size"][1])

    @property
    def orig_size(self) -> tuple[int, int] | None:
        """(H0, W0) of every training image, or None when their sizes differ (each map records its own)."""
        if not self.tuning["orig_size"]:
            return None
        return int(self.tuning["orig_size"][0]), int(self.tuning["orig_size"][1])

    @property
    def probs_dir(self) -> Path:
        return self.folder / files.TEST_PROBS

    @property
    def task(self) -> Task:
        """The task its models were trained for (tuning.json; binary when it does not say)."""
        record = self.tuning.get("task") or {}
        return Task(int(record.get("classes", 1)), tuple(record.get("names") or ()))

    @property
    def map_size(self) -> tuple[int, int]:
        """(rows, cols) of the folder's test_probs PNGs: the network size, times the classes for multi-class."""
        return self.task.map_size(*self.size)

    def map_path(self, image_id: str) -> Path:
        return self.probs_dir / f"{image_id}.png"


# what 03_predict.py writes in tuning.json (lib/predict.py tune, untuned) that 03, 04 and --images use; older
# tunings lack the optional keys
_SCORE = {"name": str, "tta": str, "threshold": float, "dice": float, "postprocess?": str,
          "dice_at_default?": float, "class_dice?": files.MapOf(float)}
TUNING = {"experiment": str, "tta": str, "threshold": float, "level": int, "oof_dice": float,
          "size": files.ListOf(int), "orig_size": files.ListOf(int), "scores": files.ListOf(_SCORE),
          "postprocess?": str, "models?": files.ListOf(dict), "task?": (TASK_RECORD, type(None)),
          "folds?": files.ListOf((int, str)), "n_images?": int, "tta_asked?": str, "postprocess_asked?": str,
          "final?": str, "tuned?": bool, "class_dice?": files.MapOf(float)}
PROBS_META = {"models": (files.ListOf(dict), type(None)), "tta": (str, type(None)),
              "size": (files.ListOf(int), type(None)), "task": (TASK_RECORD, type(None))}  # files.probs_made_by


def predict_command(folder: Path, *args: str, run: Path | None = None) -> str:
    """The 03_predict.py command (with ``args`` and the user's own flags) that writes the prediction folder
    ``folder`` (output/<experiment>) again: --output and --experiment name that folder, unless it is ``run``, the
    experiment folder this process was given (then the user's own flags already do)."""
    from params import command
    if run is not None and Path(folder).resolve() == Path(run).resolve():
        return command(PREDICT_STAGE, *args)
    return command(PREDICT_STAGE, *args, "--output", str(Path(folder).parent), "--experiment", Path(folder).name,
                   drop=("output", "experiment"))


def read_probs_meta(path: Path, repair: str) -> dict:
    """test_probs/meta.json (what made the folder's maps: ``files.probs_made_by``) with its shape checked;
    PipelineError naming the file and ending with ``repair`` otherwise."""
    return files.read_json(path, PREDICT_STAGE, PROBS_META, repair)


def parse_pred_spec(spec: str) -> tuple[Path, float]:
    """``'DIR'`` -> (DIR, 1.0); ``'DIR:W'`` -> (DIR, W) for a positive number W."""
    folder, sep, weight = spec.rpartition(":")
    if not sep:
        return Path(spec), 1.0
    try:
        w = float(weight)
    except ValueError:
        return Path(spec), 1.0  # a ':' that is part of the folder name
    if not (w > 0 and np.isfinite(w)):
        raise PipelineError(f"--preds {spec}: the weight {weight} must be a positive number")
    return Path(folder), w


def read_tuning(folder: Path, repair: str | None = None) -> dict:
    """``folder/tuning.json`` with its fields and their types checked (``TUNING``); otherwise a PipelineError naming
    the file and what is wrong, ending with ``repair`` (default: the 03_predict.py command that tunes again)."""
    path = folder / files.TUNING
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no such prediction folder; run {PREDICT_STAGE} for that experiment "
                            "or fix --preds/--experiment")
    repair = f"tune again: {predict_command(folder)}" if repair is None else repair  # 03 tunes again
    tuning = files.read_json(path, PREDICT_STAGE, TUNING, repair)
    for key in ("threshold", "oof_dice"):
        tuning[key] = float(tuning[key])
    for key in ("size", "orig_size"):
        if key == "orig_size" and tuning[key] == []:  # images of several sizes
            continue
        if len(tuning[key]) != 2 or not all(v > 0 for v in tuning[key]):
            raise PipelineError(f"{path}: {key} {tuning[key]} is not [height, width]; {repair}")
    try:
        level = level_of(tuning["threshold"])
    except ValueError as e:
        raise PipelineError(f"{path}: {e}; {repair}") from None
    if level != tuning["level"]:
        raise PipelineError(f"{path}: level {tuning['level']} disagrees with threshold {tuning['threshold']} "
                            f"(level {level}); {repair}")
    tuning.setdefault("postprocess", postprocess.NONE)  # tunings written before post-processing was tuned
    if tuning["postprocess"] not in postprocess.CHOICES:
        raise PipelineError(f"{path}: postprocess {tuning['postprocess']!r} is not one of "
                            f"{', '.join(postprocess.CHOICES)}; {repair}")
    return tuning


def load_predictions(specs: Sequence[tuple[Path, float]]) -> list[Prediction]:
    """Read every folder's tuning.json, normalise the weights; all folders must share the original size."""
    if not specs:
        raise PipelineError("no prediction folders given (--preds)")
    folders = [Path(f).resolve() for f, _ in specs]
    if len(set(folders)) < len(folders):
        raise PipelineError(f"--preds names a folder twice: {', '.join(str(f) for f, _ in specs)}")
    total = sum(w for _, w in specs)
    preds = [Prediction(Path(f), w / total, w, read_tuning(Path(f))) for f, w in specs]
    tasks = {p.task for p in preds}
    if len(tasks) > 1:
        raise PipelineError("prediction folders were made for different tasks: " + ", ".join(
            f"{p.folder} {p.task.describe()}" for p in preds) + "; ensemble runs of the same task")
    sizes = {p.orig_size for p in preds}
    if len(sizes) > 1:
        raise PipelineError("prediction folders disagree on the original image size: " + ", ".join(
            f"{p.folder} {'x'.join(map(str, p.orig_size[::-1])) if p.orig_size else 'mixed sizes'}" for p in preds)
            + "; ensemble runs of the same data")
    return preds


def ensemble_threshold(preds: Sequence[Prediction], override: float = 0.0) -> tuple[float, str]:
    """(threshold, where it came from): ``override`` when non-zero, else the weighted mean of the tuned ones."""
    if override:
        level_of(override)  # raises for a threshold outside (0, 1)
        return float(override), "--threshold"
    if len(preds) == 1:
        return float(preds[0].tuning["threshold"]), f"tuned out-of-fold ({preds[0].folder / files.TUNING})"
    mean = float(sum(p.weight * p.tuning["threshold"] for p in preds))
    return mean, "weighted mean of the folders' tuned thresholds (the ensemble itself was not tuned)"


def ensemble_postprocess(preds: Sequence[Prediction], override: str = "auto") -> tuple[str, str]:
    """(post-processing, where it came from): ``override`` unless it is auto, else the tuned one where every folder
    agrees, else none. Labels (multi-class) are never post-processed."""
    if not preds[0].task.binary:
        return postprocess.NONE, "labels are not post-processed"
    if override != "auto":
        return override, "--postprocess"
    tuned = {p.tuning["postprocess"] for p in preds}
    if len(tuned) == 1:
        return tuned.pop(), "tuned out-of-fold"
    return postprocess.NONE, "the folders' tunings disagree"


def missing_maps(pred: Prediction, ids: Sequence[str]) -> list[str]:
    """Test ids (in the given order) with no ``test_probs/<id>.png`` in the folder."""
    folder = pred.probs_dir
    present = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
    return [i for i in ids if f"{i}.png" not in present]


def check_maps(preds: Sequence[Prediction], ids: Sequence[str]) -> None:
    """Every folder has every test map, made by the models its tuning.json describes, of the size it states."""
    problems = []
    for p in preds:
        meta_path = p.probs_dir / files.PROBS_META
        if p.probs_dir.is_dir() and not meta_path.exists():
            raise PipelineError(f"{p.probs_dir}: no {files.PROBS_META}, so nothing says which models made these "
                                f"maps; predict them again: {PREDICT_STAGE} --replace (for that experiment)")
        replace = f"predict them again: {predict_command(p.folder, '--replace')}"
        if meta_path.exists() and read_probs_meta(meta_path, replace) != files.probs_made_by(p.tuning):
            raise PipelineError(f"{p.probs_dir}: its maps were made by other models or settings than "
                                f"{p.folder / files.TUNING} describes; {replace}")
        missing = missing_maps(p, ids)
        if missing:
            problems.append(f"{p.probs_dir}: {len(missing)} of {len(ids)} test maps missing: "
                            f"{listing([m + '.png' for m in missing], MAX_LISTED)}")
    if problems:
        raise PipelineError("; ".join(problems) + f"; run {PREDICT_STAGE} (it continues where it stopped; "
                            "with separate --shard K/N jobs, re-run the shards that did not finish)")
    for p in preds:
        first = files.read_prob_png(p.map_path(ids[0]))
        if first.shape != p.map_size:
            raise PipelineError(f"{p.map_path(ids[0])}: map is {first.shape[1]}x{first.shape[0]} but "
                                f"{p.folder / files.TUNING} says {p.map_size[1]}x{p.map_size[0]}; re-run "
                                f"{PREDICT_STAGE}")


# --- one image: the pure part ---
def blend(maps: Sequence[NDArray[np.uint8]], weights: Sequence[float]) -> NDArray[np.uint8]:
    """Weighted average of equally shaped uint8 maps, rounded to uint8 (half to even).

    maps: k arrays (H, W) uint8; weights: k floats summing to 1. One map is returned as is.
    """
    if len(maps) != len(weights) or not maps:
        raise ValueError(f"blend needs as many weights as maps, got {len(maps)} maps and {len(weights)} weights")
    if len(maps) == 1:
        return maps[0]
    acc = np.multiply(maps[0], np.float32(weights[0]), dtype=np.float32)
    for m, w in zip(maps[1:], weights[1:]):
        acc += np.multiply(m, np.float32(w), dtype=np.float32)
    np.rint(acc, out=acc)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8)


def ensemble_mask(maps: Sequence[NDArray[np.uint8]], weights: Sequence[float], orig_size: tuple[int, int],
                  threshold: float, post: str = postprocess.NONE) -> NDArray[np.bool_]:
    """Network-size maps (each (h_i, w_i) uint8) -> (H0, W0) bool mask: from_net each, blend, post-process
    (lib/postprocess.py), binarize."""
    h0, w0 = orig_size
    return binarize(postprocess.apply(post, blend([from_net(m, h0, w0) for m in maps], weights)), threshold)


def ensemble_labels(maps: Sequence[NDArray[np.uint8]], weights: Sequence[float], orig_size: tuple[int, int],
                    task: Task) -> NDArray[np.uint8]:
    """Multi-class network-size maps (each (C * h_i, w_i) uint8) -> (H0, W0) uint8 labels: each class map brought
    to the image's size, blended over the folders, argmax."""
    h0, w0 = orig_size
    per_folder = [at_size(m, task, h0, w0) for m in maps]  # each (C, H0, W0)
    blended = np.stack([blend([f[c] for f in per_folder], weights) for c in range(task.classes)])
    return task.decide(blended, 0)


# --- many images: worker processes ---
@dataclass(frozen=True)
class EncodeJob:
    """What a worker needs to turn a test id into its RLE (picklable, sent once per worker)."""
    folders: tuple[Path, ...]  # the folders' test_probs/
    sizes: tuple[tuple[int, int], ...]  # (h, w) of each folder's maps
    weights: tuple[float, ...]
    threshold: float
    test_dir: Path | None = None  # input/test: each map's recorded image size is checked against its image
    test_names: dict[str, str] | None = None  # id -> its file name in test_dir, where not <id>.jpg
    rle_order: str = "row"  # --rle-order
    task: Task = BINARY  # multi-class: every scored class's RLE, of the argmax of the blended class maps
    postprocess: str = postprocess.NONE  # binary: lib/postprocess.py's, on the blended full-size map
    repairs: tuple[str, ...] = ()  # per folder: the command that predicts its maps again (``predict_command``)


def encode_one(image_id: str, job: EncodeJob) -> tuple[str, str | tuple[str, ...]]:
    """(image_id, validated RLE of its ensemble mask at its image's own size), or for a multi-class task
    (image_id, one RLE per class 1..C-1). With ``job.test_dir``, each map must record the fingerprint of the
    test image as it is now (``fingerprint.is_current``: stat first); a map of an image changed since is refused."""
    maps, origs, sources = [], set(), []
    for folder, size in zip(job.folders, job.sizes):
        path = folder / f"{image_id}.png"
        info = files.prob_png_header(path)
        if info is None or info[1] is None:
            raise PipelineError(f"{path}: damaged, or written without the size of its image (an older version); "
                                f"run {PREDICT_STAGE} again: it predicts such maps again")
        if info[0] != size:
            raise PipelineError(f"{path}: map is {info[0][1]}x{info[0][0]}, the folder's tuning.json says "
                                f"{size[1]}x{size[0]}; run {PREDICT_STAGE} again: it predicts such maps again")
        origs.add(info[1])
        sources.append((path, info[2]))
        maps.append(files.read_prob_png(path))
    if len(origs) > 1:
        raise PipelineError(f"{image_id}: the prediction folders' maps come from images of different sizes "
                            f"{sorted(origs)}; ensemble folders predicted from the same test images")
    orig = origs.pop()
    if job.test_dir is not None:
        image = job.test_dir / (job.test_names or {}).get(image_id, f"{image_id}.jpg")
        for k, (path, source) in enumerate(sources):
            repair = job.repairs[k] if k < len(job.repairs) else PREDICT_STAGE
            if source is None:
                raise PipelineError(f"{path}: records no fingerprint of its image {image.name} (written by an older "
                                    f"version), so nothing says the image is unchanged; predict it again: {repair} "
                                    "(it predicts such maps again)")
            if fingerprint.is_current(image, source):
                continue
            now = image_header_size(image)
            what = (f"is {'unreadable' if now is None else f'{now[1]}x{now[0]}'} but its map was made from a "
                    f"{orig[1]}x{orig[0]} image" if now != orig else
                    f"has changed since its map {path} was made from it (same size, other bytes)")
            raise PipelineError(f"{image}: {what}; predict it again: {repair} (it predicts the maps of changed "
                                "images again)")
    if job.task.binary:
        masks = [ensemble_mask(maps, job.weights, orig, job.threshold, job.postprocess)]
    else:
        labels = ensemble_labels(maps, job.weights, orig, job.task)
        masks = [labels == c for c in job.task.scored]
    codes = tuple(rle.encode(m, job.rle_order) for m in masks)
    try:
        for code in codes:
            rle.validate(code, orig)
    except ValueError as e:
        raise PipelineError(f"{image_id}: the encoder produced an invalid RLE ({e}); a bug in lib/rle.py") from None
    return image_id, codes[0] if job.task.binary else codes


# --- the file ---
def write_submission(path: Path, ids: Sequence[str], masks_rle: Iterable[str], shape: tuple[int, int] | None,
                     expected_ids: Sequence[str] | None = None, validate_rle: bool = True,
                     keys: Sequence[str] | None = None) -> int:
    """Stream ``img,rle_mask`` rows (row key, RLE) into ``path`` (``.csv.gz``) atomically; return the row count.

    ids: the image ids in row order; masks_rle: one RLE string per id, same order, consumed lazily.
    keys: the ``img`` of each row (sample_submission.csv's, or the test file names); default ``<id>.jpg``.
    expected_ids: the ids of sample_submission.csv; ``ids`` must equal them, order included.
    shape: (H0, W0) every RLE must fit. validate_rle=False skips ``rle.validate`` per row, for callers
    whose strings were validated at the source (the encoding workers, at each image's size; baselines).
    Nothing is written under ``path`` unless every row passed; an earlier file there is left intact.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise ValueError(f"{path}: a submission file name must end with {SUFFIX}")
    if validate_rle and shape is None:
        raise ValueError("write_submission: validate_rle needs the shape")
    ids = list(ids)
    keys = [f"{i}.jpg" for i in ids] if keys is None else list(keys)
    if len(keys) != len(ids):
        raise ValueError(f"write_submission: {len(keys)} row keys for {len(ids)} ids")
    _check_ids(path, ids, expected_ids)
    refused = f"{path}: not written:"
    files.remove_stale_temps(path.parent, path.name)  # a killed run's partial file (never under the final name)
    with files.atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(path.name[:-3], "wb", GZIP_LEVEL, raw, mtime=0) as gz:
                gz.write((",".join(HEADER) + "\n").encode())
                rows, batch, codes = 0, [], iter(masks_rle)
                for image_id, key in zip(ids, keys):
                    code = next(codes, None)
                    if code is None:
                        raise PipelineError(f"{refused} only {rows} masks for the {len(ids)} ids")
                    if not isinstance(code, str):
                        raise PipelineError(f"{refused} the mask of {image_id} is a {type(code).__name__}, "
                                            "not an RLE string")
                    if validate_rle:
                        try:
                            rle.validate(code, shape)
                        except ValueError as e:
                            raise PipelineError(f"{refused} bad RLE for {image_id} (row {rows + 1}): {e}") from None
                    batch.append(files.csv_row(key, code))
                    rows += 1
                    if len(batch) == WRITE_BATCH:
                        gz.write("".join(batch).encode())
                        batch.clear()
                if next(codes, None) is not None:
                    raise PipelineError(f"{refused} more masks than the {len(ids)} ids")
                gz.write("".join(batch).encode())
            raw.flush()
            os.fsync(raw.fileno())
    return rows


def _check_ids(path: Path, ids: list[str], expected: Sequence[str] | None) -> None:
    if expected is None:
        return
    expected = list(expected)
    if ids == expected:
        return
    if len(ids) != len(expected):
        raise PipelineError(f"{path}: not written: {len(ids)} ids but {files.SAMPLE_SUBMISSION} lists {len(expected)}")
    k = next(n for n, (a, b) in enumerate(zip(ids, expected)) if a != b)
    raise PipelineError(f"{path}: not written: row {k + 1} is {ids[k]} but {files.SAMPLE_SUBMISSION} has "
                        f"{expected[k]} there (rows must follow its order)")


def read_submission(path: Path, strip_extension: bool = True) -> Iterator[tuple[str, str]]:
    """Stream (image id, RLE) rows of a submission ``.csv.gz`` (or ``.csv``), checking the header."""
    if not path.exists():
        raise PipelineError(f"{path}: missing; write it with 04_submit.py")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header) != HEADER:
                raise PipelineError(f"{path}: header is {header}, expected {','.join(HEADER)}")
            for n, row in enumerate(reader, start=2):
                if len(row) != 2:
                    raise PipelineError(f"{path}: line {n} has {len(row)} fields, expected 2")
                yield (files.image_id(row[0]) if strip_extension else row[0]), row[1]
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: unreadable ({e}); write it again with 04_submit.py") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(path: Path, fields: dict, rows: int, seconds: float, sample_submission: Path) -> dict:
    """Write ``<name>.manifest.json`` beside the submission ``path``: ``fields`` plus what every manifest has."""
    manifest = {"submission": path.name, "rows": rows, "seconds": round(seconds, 3),
                "images_per_s": round(rows / seconds, 1) if seconds > 0 else None,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "sample_submission": str(sample_submission), "sha256": file_sha256(path), **fields}
    files.write_json(manifest_path(path), manifest)
    return manifest


# --- the whole model submission ---
def make_submission(path: Path, preds: Sequence[Prediction], ids: Sequence[str], sample_submission: Path,
                    threshold: float = 0.0, workers: int = 2, chunksize: int = CHUNKSIZE,
                    test_dir: Path | None = None, keys: Sequence[str] | None = None,
                    test_names: dict[str, str] | None = None, rle_order: str = "row",
                    class_rows: Sequence[tuple[str, int]] | None = None, post: str = "auto",
                    checked: bool = False, repairs: Sequence[str] = ()) -> dict:
    """Check every map exists, stream the ensemble's masks into ``path`` with workers, write the manifest.

    Multi-class (the folders' task): ``keys`` are the rows' ids and ``class_rows`` the (image id, class) of each
    row; every image is encoded once (all its classes), and the rows are written in ``keys`` order.

    ids: test ids in submission order; keys: their rows' ``img`` (default ``<id>.jpg``). threshold: 0 = the tuned
    one(s). test_dir: the test images (file names ``test_names``, default ``<id>.jpg``), which must still hold
    the bytes each map records the fingerprint of (None: not checked). post: --postprocess (auto: the tuned one).
    Each mask is encoded at its image's own size, in ``rle_order``. checked: the caller ran ``check_maps`` already.
    repairs: per folder, the command that predicts its maps again (``predict_command``), named when a map's image
    changed. Returns the manifest.
    """
    if not checked:
        check_maps(preds, ids)
    thr, source = ensemble_threshold(preds, threshold)
    post, post_source = ensemble_postprocess(preds, post)
    orig_size = preds[0].orig_size
    if test_names is not None:  # only what the workers need; nothing when every name is Carvana's <id>.jpg
        test_names = {i: test_names[i] for i in ids if i in test_names and test_names[i] != f"{i}.jpg"} or None
    task = preds[0].task
    job = EncodeJob(tuple(p.probs_dir for p in preds), tuple(p.map_size for p in preds),
                    tuple(p.weight for p in preds), thr, test_dir, test_names, rle_order, task, post, tuple(repairs))
    start = time.perf_counter()
    with parallel.ordered(functools.partial(encode_one, job=job), ids, workers, chunksize) as results:
        encoded = progress((code for _, code in results), f"encode {path.name}", total=len(ids))
        if task.binary:
            rows = write_submission(path, ids, encoded, orig_size, expected_ids=ids, validate_rle=False, keys=keys)
        else:
            if class_rows is None or keys is None:
                raise ValueError("make_submission: a multi-class submission needs keys and class_rows")
            per_image, slot = dict(zip(ids, encoded)), {c: k for k, c in enumerate(task.scored)}
            rows = write_submission(path, list(keys), (per_image[i][slot[c]] for i, c in class_rows), orig_size,
                                    validate_rle=False, keys=keys)
    seconds = time.perf_counter() - start
    ttas = sorted({p.tuning["tta"] for p in preds})
    scored = (len(preds) == 1 and not threshold and preds[0].tuning.get("tuned", True)
              and post == preds[0].tuning["postprocess"])
    full = preds[0].tuning.get("final") == "full"
    fields = {
        "inputs": [{"folder": str(p.folder), "experiment": p.tuning["experiment"], "weight": p.weight,
                    "weight_given": p.weight_given, "tta": p.tuning["tta"], "postprocess": p.tuning["postprocess"],
                    "threshold": p.tuning["threshold"],
                    "oof_dice": p.tuning["oof_dice"], "size": list(p.size)} for p in preds],
        "threshold": thr, "level": level_of(thr), "threshold_source": source,
        "tta": ttas[0] if len(ttas) == 1 else "mixed (see inputs)",
        "postprocess": post, "postprocess_source": post_source,
        "oof_dice": preds[0].tuning["oof_dice"] if scored else None,
        "oof_dice_note": (("out-of-fold full-resolution Dice of the fold models at this threshold (tuning.json)"
                           + ("; the full model predicted the test set" if full else "")) if scored else
                          "not measured: the ensemble / fixed threshold or post-processing / untuned full model was "
                          "not scored out-of-fold"),
        "orig_size": list(orig_size) if orig_size else None, "rle_order": rle_order, "workers": workers,
        "task": task.record(),
    }
    return write_manifest(path, fields, rows, seconds, sample_submission)


# --- local scoring (demo data has test truth) ---
def truth_paths(root: Path, ids: Sequence[str], mask_suffix: str = "") -> list[Path]:
    """The mask of each id in ``root/test_masks`` (named as training masks are: lib/layout.py); PipelineError naming
    the missing ones."""
    folder = root / files.TEST_MASKS
    if not folder.is_dir():
        raise PipelineError(f"{folder}: no test truth to score against (only the demo data has it: "
                            "01_prepare.py --demo); drop --score for Kaggle data")
    found, ambiguous, _ = layout.match_masks(ids, folder, mask_suffix, [])  # others: not scored
    if ambiguous:
        raise PipelineError(ambiguous[0])
    missing = [i for i in ids if i not in found]
    if missing:
        like = next(iter(found.items()), None)  # name the missing masks as the others are named
        rest = like[1].name[len(like[0]):] if like and like[1].is_file() else "_mask.gif"
        raise PipelineError(f"{folder}: {len(missing)} of {len(ids)} truth masks missing: "
                            f"{listing([i + rest for i in missing], MAX_LISTED)}")
    return [found[i] for i in ids]


def score_submission(path: Path, root: Path, mask_suffix: str = "", rle_order: str = "row") -> float:
    """Mean Dice over the submission's rows against ``root/test_masks``, each at its own full size, the Kaggle way."""
    return score_submissions([path], root, mask_suffix, rle_order)[path]


def score_submissions(paths: Sequence[Path], root: Path, mask_suffix: str = "", rle_order: str = "row"
                      ) -> dict[Path, float]:
    """``score_submission`` of several submissions, decoding each truth mask once for all of them."""
    rows = {}
    for path in paths:
        rows[path] = list(read_submission(path))
        if not rows[path]:
            raise PipelineError(f"{path}: no rows to score")
    ids = list(dict.fromkeys(i for path_rows in rows.values() for i, _ in path_rows))
    truths = dict(zip(ids, truth_paths(root, ids, mask_suffix)))
    codes: dict[str, list[tuple[Path, str]]] = {i: [] for i in ids}
    for path, path_rows in rows.items():
        for image_id, code in path_rows:
            codes[image_id].append((path, code))
    scores: dict[Path, list[float]] = {path: [] for path in paths}
    for image_id, image_codes in codes.items():
        truth = read_mask(truths[image_id])
        for path, code in image_codes:
            try:
                pred = rle.decode(code, truth.shape, rle_order)
            except ValueError as e:
                raise PipelineError(f"{path}: bad RLE for {image_id}: {e}") from None
            scores[path].append(dice(pred, truth))
    return {path: float(np.mean(s)) for path, s in scores.items()}


def score_class_submissions(paths: Sequence[Path], root: Path, task: Task, class_rows: dict[str, tuple[str, int]],
                            mask_suffix: str = "", rle_order: str = "row") -> dict[Path, tuple[float, dict]]:
    """Multi-class submissions against ``root/test_masks`` label masks: {path: (mean over images of the mean Dice
    of the classes 1..C-1, {class name: its mean Dice})}. class_rows: row id -> (image id, class)."""
    rows = {path: list(read_submission(path, strip_extension=False)) for path in paths}
    images = list(dict.fromkeys(class_rows[k][0] for path_rows in rows.values() for k, _ in path_rows
                                if k in class_rows))
    truths = dict(zip(images, truth_paths(root, images, mask_suffix)))
    slot = {c: k for k, c in enumerate(task.scored)}
    out = {}
    for path, path_rows in rows.items():
        unknown = [k for k, _ in path_rows if k not in class_rows]
        if unknown:
            raise PipelineError(f"{path}: rows {', '.join(unknown[:5])} are not <image id>_<class name> of this task")
        by_image: dict[str, dict[int, str]] = {}
        for key, code in path_rows:
            image_id, c = class_rows[key]
            by_image.setdefault(image_id, {})[c] = code
        dices = []
        for image_id, codes in by_image.items():
            truth = read_truth(truths[image_id], task)
            pred = np.zeros(truth.shape, np.uint8)
            for c in task.scored:
                try:
                    pred[rle.decode(codes.get(c, ""), truth.shape, rle_order)] = c
                except ValueError as e:
                    raise PipelineError(f"{path}: bad RLE for {image_id} class {task.names[c]}: {e}") from None
            dices.append(task.class_dices(pred, truth))
        per_class = np.mean(dices, axis=0)
        out[path] = (float(per_class.mean()), {task.names[c]: float(per_class[slot[c]]) for c in task.scored})
    return out
