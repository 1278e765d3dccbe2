"""Submissions: ``<name>.csv.gz`` (``img,rle_mask`` rows, or the form of a Kaggle sample_submission.csv: Severstal's
``ImageId,ClassId,EncodedPixels`` or ``ImageId_ClassId``, Clouds' ``Image_Label``, lib/kagglecsv.py) and
``<name>.manifest.json`` beside it, written by 04.

Every submission, the model's and the baselines', is written by ``write``: the rows streamed into the file under a
temporary name, renamed only when every row is in, then the manifest saying what went in; ``read_submission``
streams them back. The model's submission (``make_submission``) is made from one or more prediction folders
(lib/testmaps.py): for every test id, in sample_submission.csv order, a worker process reads each folder's map and
decides the image's mask with ``Task.decide_maps`` (the same function tuning scored with), and RLE-encodes it.

Memory stays bounded whatever the number of images: the workers are ``lib/parallel.py``'s, which queues at most
``IN_FLIGHT_CHUNKS`` chunks of ``CHUNKSIZE`` ids per worker, in work or finished-but-unwritten at any time, and only
RLE strings cross between processes.
``benchmarks/bench_submit.py`` measures speed and peak memory.
"""
from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lib import files, fingerprint, kagglecsv, parallel, postprocess, rle, testmaps
from lib.ensemble import ensemble_label_decision, ensemble_min_area, ensemble_postprocess, ensemble_threshold
from lib.errors import PipelineError
from lib.inputs import image_header_size
from lib.metrics import level_of
from lib.progress import progress
from lib.task import BINARY, Task
from lib.testmaps import Prediction
from lib.tiles import Tiling
from lib.tuning import PREDICT_STAGE, map_size, predict_command

SUFFIX, MANIFEST_SUFFIX = ".csv.gz", ".manifest.json"
HEADER = kagglecsv.PLAIN.header  # ("img", "rle_mask"): the rows' form without a sample in another
CHUNKSIZE = 8  # test ids per worker task (~40 ms of work): few messages, and the workers stay evenly busy
GZIP_LEVEL = 1  # 0.23 ms and 4.3 kB per full-size row; level 6: 1.2 ms (the writer would be the bottleneck), 3.9 kB
WRITE_BATCH = 256  # rows joined per gzip write


# --- names ---
def submission_path(run: Path, name: str) -> Path:
    """``run/<name>.csv.gz``: ``name`` is the stem (``--submission``)."""
    if not name or "/" in name or name.endswith((".csv", ".gz")):
        raise PipelineError(f"--submission {name!r}: give a bare file name stem such as 'submission'")
    return run / f"{name}{SUFFIX}"


def manifest_path(path: Path) -> Path:
    """``x.csv.gz`` -> ``x.manifest.json`` beside it."""
    return path.with_name(path.name[: -len(SUFFIX)] + MANIFEST_SUFFIX)


# --- many images: worker processes ---
@dataclass(frozen=True)
class EncodeJob:
    """What a worker needs to turn a test id into its RLE (picklable, sent once per worker)."""
    folders: tuple[Path, ...]  # the folders' test_probs/
    sizes: tuple[tuple[int, int], ...]  # (h, w) of each folder's maps
    weights: tuple[float, ...]
    threshold: float | tuple[float, ...]
    test_dir: Path | None = None  # input/test: each map's recorded image size is checked against its image
    test_names: dict[str, str] | None = None  # id -> its file name in test_dir, where not <id>.jpg
    rle_order: str = "row"  # --rle-order
    task: Task = BINARY  # multi-class: every scored class's RLE, of the argmax of the blended class maps
    postprocess: str = postprocess.NONE  # binary: lib/postprocess.py's, on the blended full-size map
    repairs: tuple[str, ...] = ()  # per folder: the command that predicts its maps again (``predict_command``)
    min_area: float | tuple[float, ...] = 0.0  # a mask under this fraction of its image is emptied (``metrics.gate``);
    # a multi-label task has one threshold and one minimum area per label, a multi-class task a minimum area per class
    # 1..C-1 (``Task.gate_classes``)
    tilings: tuple[Tiling | None, ...] = ()  # per folder: its maps' sliding window (each at its image's scaled size)


def encode_one(image_id: str, job: EncodeJob) -> tuple[str, tuple[str, ...]]:
    """(image_id, the RLE of each scored class of its ensemble decision at its image's own size: one for binary
    masks). With ``job.test_dir``, each map must record the fingerprint of the test image as it is now
    (``fingerprint.is_current``: stat first); a map of an image changed since is refused."""
    maps, origs, sources = [], set(), []
    for k, (folder, size) in enumerate(zip(job.folders, job.sizes)):
        path = folder / f"{image_id}.png"
        info = testmaps.header(path)
        if info is None or info[1] is None:
            raise PipelineError(f"{path}: damaged, or records no size of its image; run "
                                f"{predict_command(folder.parent)} again: it predicts such maps again")
        tiling = job.tilings[k] if k < len(job.tilings) else None
        size = map_size(job.task, size, tiling, info[1]) if tiling else size
        if info[0] != size:
            raise PipelineError(f"{path}: map is {info[0][1]}x{info[0][0]}, the folder's tuning.json says "
                                f"{size[1]}x{size[0]}; run {predict_command(folder.parent)} again: it predicts such "
                                "maps again")
        origs.add(info[1])
        sources.append((path, info[2]))
        maps.append(testmaps.read_map(path))
    if len(origs) > 1:
        raise PipelineError(f"{image_id}: the prediction folders' maps come from images of different sizes "
                            f"{sorted(origs)}; ensemble folders predicted from the same test images")
    orig = origs.pop()
    if job.test_dir is not None:
        image = job.test_dir / (job.test_names or {}).get(image_id, f"{image_id}.jpg")
        for k, (path, source) in enumerate(sources):
            repair = job.repairs[k] if k < len(job.repairs) else PREDICT_STAGE
            if source is None:
                raise PipelineError(f"{path}: records no fingerprint of its image {image.name}, so nothing says the "
                                    f"image is unchanged; predict it again: {repair} (it predicts such maps again)")
            if fingerprint.is_current(image, source):
                continue
            now = image_header_size(image)
            what = (f"is {'unreadable' if now is None else f'{now[1]}x{now[0]}'} but its map was made from a "
                    f"{orig[1]}x{orig[0]} image" if now != orig else
                    f"has changed since its map {path} was made from it (same size, other bytes)")
            raise PipelineError(f"{image}: {what}; predict it again: {repair} (it predicts the maps of changed "
                                "images again)")
    decision = job.task.decide_maps(maps, job.weights, orig, job.threshold, job.postprocess, job.min_area)
    return image_id, tuple(rle.encode(m, job.rle_order) for m in job.task.class_masks(decision))


# --- the file ---
def write_submission(path: Path, ids: Sequence[str], masks_rle: Iterable[str], shape: tuple[int, int] | None,
                     expected_ids: Sequence[str] | None = None, keys: Sequence[str] | None = None,
                     form: kagglecsv.Form = kagglecsv.PLAIN) -> int:
    """Stream ``img,rle_mask`` rows (row key, RLE) into ``path`` (``.csv.gz``) atomically; return the row count.
    ``form``: the header and fields of another form (lib/kagglecsv.py: a key ``<ImageId>_<ClassId>`` is written as
    two fields in the three-column form).

    ids: the image ids in row order; masks_rle: one RLE string per id, same order, consumed lazily.
    keys: the ``img`` of each row (sample_submission.csv's, or the test file names); default ``<id>.jpg``.
    expected_ids: the ids of sample_submission.csv; ``ids`` must equal them, order included.
    shape: (H0, W0) every RLE must fit (``rle.validate``), or None: not checked (the pipeline's own rows come from
    ``rle.encode`` at each image's size; tests pin that it round-trips).
    Nothing is written under ``path`` unless every row passed; an earlier file there is left intact.
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise ValueError(f"{path}: a submission file name must end with {SUFFIX}")
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
                gz.write((",".join(form.header) + "\n").encode())
                rows, batch, codes = 0, [], iter(masks_rle)
                for image_id, key in zip(ids, keys):
                    code = next(codes, None)
                    if code is None:
                        raise PipelineError(f"{refused} only {rows} masks for the {len(ids)} ids")
                    if not isinstance(code, str):
                        raise PipelineError(f"{refused} the mask of {image_id} is a {type(code).__name__}, "
                                            "not an RLE string")
                    if shape is not None:
                        try:
                            rle.validate(code, shape)
                        except ValueError as e:
                            raise PipelineError(f"{refused} bad RLE for {image_id} (row {rows + 1}): {e}") from None
                    batch.append(files.csv_row(*form.fields(key, code)))
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
    """Stream (image id, RLE) rows of a submission ``.csv.gz`` (or ``.csv``), checking the header: ``img,rle_mask`` or
    a Kaggle form (lib/kagglecsv.py; the row id of the three-column form is ``<ImageId>_<ClassId>``)."""
    from params import command
    if not path.exists():
        raise PipelineError(f"{path}: missing; write it with {command('04_submit.py')}")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            form = kagglecsv.form_of(header) if header else None
            if form is None:
                raise PipelineError(f"{path}: header is {header}, expected {','.join(HEADER)} (or "
                                    f"{kagglecsv.KAGGLE_FORMS})")
            for n, row in enumerate(reader, start=2):
                if len(row) != len(form.header):
                    raise PipelineError(f"{path}: line {n} has {len(row)} fields, expected {len(form.header)}")
                key, code = form.key_code(row)
                yield (files.image_id(key) if strip_extension else key), code
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: unreadable ({e}); write it again with {command('04_submit.py')}") from None


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


def write(path: Path, keys: Sequence[str], codes: Iterable[str], fields: dict, sample_submission: Path) -> dict:
    """Every submission's writer: the rows (``keys[i]``, the i-th RLE of ``codes``, consumed lazily) into ``path``, in
    ``sample_submission``'s form (its header; ``img,rle_mask`` without one), then its manifest: ``fields`` (what went
    in) plus the rows, the time they took and the file's digest. Returns the manifest."""
    start = time.perf_counter()
    form = kagglecsv.form_of(kagglecsv.read_header(sample_submission)) if sample_submission.is_file() else None
    rows = write_submission(path, keys, codes, None, keys=keys, form=form or kagglecsv.PLAIN)
    return write_manifest(path, fields, rows, time.perf_counter() - start, sample_submission)


# --- the model's submission ---
def _row_codes(encoded: Iterable[tuple[str, ...]], ids: Sequence[str], class_rows: Sequence[tuple[str, int]],
               task: Task) -> Iterator[str]:
    """The RLE of each row (image id, class) in row order, from the RLEs of every scored class of each image in
    ``ids`` order (``encoded``, lazily): an image's RLEs are held only until its last row is written, so rows that
    follow the images' order hold one image at a time."""
    slot = {c: k for k, c in enumerate(task.scored)}
    left = Counter(i for i, _ in class_rows)
    held: dict[str, tuple[str, ...]] = {}
    images = zip(ids, encoded)
    for image_id, c in class_rows:
        while image_id not in held:
            found = next(images, None)
            if found is None:
                raise ValueError(f"a submission row names {image_id}, which is not among the test ids")
            held[found[0]] = found[1]
        yield held[image_id][slot[c]]
        left[image_id] -= 1
        if not left[image_id]:
            del held[image_id]


def make_submission(path: Path, preds: Sequence[Prediction], ids: Sequence[str], sample_submission: Path,
                    threshold: float = 0.0, workers: int = 2, chunksize: int = CHUNKSIZE,
                    test_dir: Path | None = None, keys: Sequence[str] | None = None,
                    test_names: dict[str, str] | None = None, rle_order: str = "row",
                    class_rows: Sequence[tuple[str, int]] | None = None, post: str = "auto",
                    checked: bool = False, repairs: Sequence[str] = ()) -> dict:
    """Check every map exists, stream the ensemble's masks into ``path`` with workers, write the manifest.

    ids: test ids in submission order; every image is encoded once (all its classes). keys: the rows' ``img``
    (default: a row per image and scored class, ``Task.row_ids`` of ``<id>.jpg``); class_rows: the (image id,
    class) of each row (default: each image's scored classes, in ``ids`` order). threshold: 0 = the tuned one(s).
    test_dir: the test images (file names ``test_names``, default ``<id>.jpg``), which must still hold the bytes each
    map records the fingerprint of (None: not checked). post: --postprocess (auto: the tuned one). Each mask is
    encoded at its image's own size, in ``rle_order``. checked: the caller ran ``testmaps.check`` already.
    repairs: per folder, the command that predicts its maps again (``tuning.predict_command``), named when a map's
    image changed. Returns the manifest.
    """
    if not checked:
        testmaps.check(preds, ids)
    task = preds[0].task
    keys = [k for i in ids for k in task.row_ids(f"{i}.jpg", i)] if keys is None else list(keys)
    class_rows = [(i, c) for i in ids for c in task.scored] if class_rows is None else class_rows
    thr, source = ensemble_threshold(preds, threshold)
    post, post_source = ensemble_postprocess(preds, post)
    min_area, area_source = ensemble_min_area(preds)
    # multi-label: each label's threshold and min area; multi-class: each class's min area (no threshold: the argmax)
    labels = ensemble_label_decision(preds, threshold)
    orig_size = preds[0].orig_size
    if test_names is not None:  # only what the workers need; nothing when every name is Carvana's <id>.jpg
        test_names = {i: test_names[i] for i in ids if i in test_names and test_names[i] != f"{i}.jpg"} or None
    job = EncodeJob(tuple(p.probs_dir for p in preds), tuple(p.map_size for p in preds),
                    tuple(p.weight for p in preds), labels[0] if labels and labels[0] else thr, test_dir, test_names,
                    rle_order, task, post, tuple(repairs), labels[1] if labels else min_area,
                    tuple(p.tuning.tiling for p in preds))
    ttas = sorted({p.tuning.tta for p in preds})
    first = preds[0].tuning
    scored = len(preds) == 1 and not threshold and first.tuned and post == first.postprocess
    fields = {
        "inputs": [{"folder": str(p.folder), "experiment": p.tuning.experiment, "weight": p.weight,
                    "weight_given": p.weight_given, "tta": p.tuning.tta, "postprocess": p.tuning.postprocess,
                    "threshold": p.tuning.threshold, "oof_dice": p.tuning.oof_dice, "size": list(p.size),
                    "min_area": p.tuning.min_area,
                    **({"tiling": p.tuning.tiling.record()} if p.tuning.tiling else {})}
                   for p in preds],
        "threshold": thr, "level": level_of(thr), "threshold_source": source,
        "tta": ttas[0] if len(ttas) == 1 else "mixed (see inputs)",
        "postprocess": post, "postprocess_source": post_source, "min_area": min_area, "min_area_source": area_source,
        **({"label_thresholds": list(labels[0])} if labels and labels[0] else {}),
        **({"label_min_areas": list(labels[1])} if labels else {}),
        "oof_dice": first.oof_dice if scored else None,
        "oof_dice_note": (("out-of-fold full-resolution Dice of the fold models at this threshold (tuning.json)"
                           + ("; the full model predicted the test set" if first.final == files.FULL else ""))
                          if scored else
                          "not measured: the ensemble / fixed threshold or post-processing / untuned full model was "
                          "not scored out-of-fold"),
        "orig_size": list(orig_size) if orig_size else None, "rle_order": rle_order, "workers": workers,
        "task": task.record(),
    }
    with parallel.ordered(functools.partial(encode_one, job=job), ids, workers, chunksize) as results:
        encoded = progress((codes for _, codes in results), f"encode {path.name}", total=len(ids))
        return write(path, keys, _row_codes(encoded, ids, class_rows, task), fields, sample_submission)
