"""Test maps: ``<experiment>/test_probs/<id>.png`` and ``test_probs/meta.json``, written by 03, read by 04.

A map is a uint8 PNG of the network-size probabilities (with --tile-size: of the stitched probabilities at its image's
size shrunk by --downscale; multi-class: the class maps stacked down) with two text
chunks right after the header: the size of its image and that image's fingerprint (lib/fingerprint.py), so a map is
always brought back to its own image's size and a map of an image changed since is predicted again (03) or refused
(04). meta.json says which models, TTA, size and task made the folder's maps; 03 and 04 refuse maps of other ones.
A ``Prediction`` is one prediction folder (its tuning.json and maps) as 04 ensembles it.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from lib import files, fingerprint, tuning as tuning_mod
from lib.errors import PipelineError, listing, steps
from lib.fingerprint import Fingerprint
from lib.task import RECORD as TASK_RECORD, Task
from lib.tiles import Tiling
from lib.tuning import PREDICT_STAGE, Tuning, map_size, predict_command

_ORIG_KEY = b"orig"  # tEXt keyword of a map's source image size, "<H>x<W>"
_SOURCE_KEY = b"source"  # tEXt keyword of its source image's fingerprint, "<bytes> <mtime_ns> <digest>"
_HEAD_BYTES = 256  # the map's header and text chunks are within its first bytes
MAX_LISTED = 10  # missing maps named in an error before "... and N more"


# --- one map ---
def png_bytes(prob_u8: NDArray[np.uint8], orig_size: tuple[int, int], source: Fingerprint | None = None) -> bytes:
    """The PNG ``write_map`` writes: the map, then text chunks right after the header recording the size (H0, W0) of
    its image and, when given, that image's fingerprint ``source``.

    No PNG row filter: on these maps (long runs of 0 and 255) it compresses as well as libpng's adaptive filtering
    and decodes much faster, which is what 04_submit.py spends its time on (benchmarks/results/submit.md)."""
    ok, png = cv2.imencode(".png", prob_u8, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                             cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE])
    if not ok:
        raise OSError("could not encode a probability map")
    texts = [(_ORIG_KEY, f"{int(orig_size[0])}x{int(orig_size[1])}")] + \
        ([(_SOURCE_KEY, source.text())] if source is not None else [])
    chunks = b""
    for key, value in texts:
        data = key + b"\0" + value.encode()
        chunks += len(data).to_bytes(4, "big") + b"tEXt" + data + zlib.crc32(b"tEXt" + data).to_bytes(4, "big")
    raw = png.tobytes()
    return raw[:33] + chunks + raw[33:]  # 33 = signature (8) + IHDR chunk (25)


def write_map(path: Path, prob_u8: NDArray[np.uint8], orig_size: tuple[int, int],
              source: Fingerprint | None = None) -> None:
    """(rows, cols) uint8 map of an image of ``orig_size`` (H0, W0) -> ``png_bytes``, atomically."""
    files.write_bytes_atomic(path, png_bytes(prob_u8, orig_size, source))


def header(path: Path) -> tuple[tuple[int, int], tuple[int, int] | None, Fingerprint | None] | None:
    """((rows, cols) of the map, (H0, W0) of its image or None, its image's Fingerprint or None) from the file's first
    bytes, or None for a file that is not such a map (missing, empty, truncated header, not 8-bit grey)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return None
    if len(head) < 33 or head[:8] != files.PNG_SIGNATURE or head[12:16] != b"IHDR" or head[24:26] != b"\x08\x00":
        return None  # 8-bit depth, colour type 0 (grey) is what write_map writes
    size = int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    orig = source = None
    at = 33
    while at + 8 <= len(head) and head[at + 4:at + 8] == b"tEXt":
        length = int.from_bytes(head[at:at + 4], "big")
        if at + 8 + length > len(head):
            break
        key, _, value = head[at + 8:at + 8 + length].partition(b"\0")
        text = value.decode(errors="replace")
        if key == _ORIG_KEY:
            h, _, w = text.partition("x")
            orig = (int(h), int(w)) if h.isdigit() and w.isdigit() else None
        elif key == _SOURCE_KEY:
            source = Fingerprint.from_record(text)
        at += 12 + length  # length, type, data, CRC
    return size, orig, source


def read_map(path: Path) -> NDArray[np.uint8]:
    """(rows, cols) uint8 map written by ``write_map``; PipelineError if missing or unreadable."""
    data = np.fromfile(path, np.uint8) if path.exists() else None
    prob = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if prob is None or prob.ndim != 2 or prob.dtype != np.uint8:
        raise PipelineError(f"{path}: missing or not an 8-bit probability map; re-run {PREDICT_STAGE} (it predicts "
                            "missing and damaged maps again)")
    return prob


# --- what made a folder's maps: meta.json ---
META_SCHEMA = {"models": files.ListOf(dict), "tta": str, "size": files.ListOf(int), "task": TASK_RECORD,
               "tiling?": dict}


@dataclass(frozen=True)
class MapsMeta:
    """The content of test_probs/meta.json: the maps of one folder share it."""
    models: list[dict]  # fingerprints of the models that tuned and predicted (Tuning.models)
    tta: str
    size: tuple[int, int]  # network size
    task: Task
    tiling: Tiling | None = None  # maps by sliding window, each at its image's size at the network's scale

    @classmethod
    def of(cls, tuning: Tuning) -> "MapsMeta":
        """What the maps made with ``tuning`` record."""
        return cls(tuning.models, tuning.tta, tuning.size, tuning.task, tuning.tiling)

    def record(self) -> dict:
        return {"models": self.models, "tta": self.tta, "size": list(self.size), "task": self.task.record(),
                "tiling": self.tiling.record() if self.tiling else {}}


def write_meta(probs_dir: Path, meta: MapsMeta) -> None:
    files.write_json(probs_dir / files.PROBS_META, meta.record())


def read_meta(probs_dir: Path, repair: str) -> MapsMeta:
    """test_probs/meta.json with its shape checked; PipelineError naming the file and ending with ``repair``
    otherwise."""
    path = probs_dir / files.PROBS_META
    r = files.read_json(path, PREDICT_STAGE, META_SCHEMA, repair)
    if len(r["size"]) != 2:
        raise PipelineError(f"{path}: size {r['size']} is not [height, width]; {repair}")
    try:
        tiling = Tiling.from_record(r.get("tiling"))
    except ValueError as e:
        raise PipelineError(f"{path}: {e}; {repair}") from None
    return MapsMeta(r["models"], r["tta"], (r["size"][0], r["size"][1]), Task.from_record(r["task"]), tiling)


# --- which maps are there ---
def finished(probs_dir: Path, ids: list[str], paths: dict[str, Path], size: tuple[int, int],
             task: Task | None = None, tiling: Tiling | None = None) -> set[str]:
    """Names ``<id>.png`` of the maps in ``probs_dir`` that are complete and current: readable 8-bit maps of the map
    size ``size`` (``Task.map_size`` of the network size; with ``tiling``, of the ``task``'s maps at each image's
    size at the network's scale, ``tuning.map_size``) whose recorded image fingerprint its image still matches
    (``fingerprint.is_current``: a stat, and a hash only for an image whose size or time changed). The others
    (damaged, empty, of an image changed since, or recording no fingerprint) are predicted again."""
    present = {e.name for e in os.scandir(probs_dir)}
    done = set()
    for i in ids:
        name = f"{i}.png"
        if name not in present:
            continue
        head = header(probs_dir / name)
        if head is None or head[1] is None or head[2] is None:
            continue
        if head[0] != (map_size(task, size, tiling, head[1]) if tiling else size):
            continue
        if fingerprint.is_current(paths[i], head[2]):
            done.add(name)
    return done


# --- prediction folders, as 04 ensembles them ---
@dataclass(frozen=True)
class Prediction:
    """One prediction folder and its share of the ensemble."""
    folder: Path
    weight: float  # normalised: the weights of an ensemble sum to 1
    weight_given: float  # as given on the command line
    tuning: Tuning  # tuning.json of the folder

    @property
    def size(self) -> tuple[int, int]:
        """(h, w) network size of the folder's maps."""
        return self.tuning.size

    @property
    def orig_size(self) -> tuple[int, int] | None:
        """(H0, W0) of every training image, or None when their sizes differ (each map records its own)."""
        return self.tuning.orig_size

    @property
    def task(self) -> Task:
        return self.tuning.task

    @property
    def map_size(self) -> tuple[int, int]:
        """(rows, cols) of the folder's maps: the network size, times the classes for multi-class."""
        return self.tuning.map_size

    def map_size_of(self, orig: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the map of an image of ``orig`` (H0, W0): ``Tuning.map_size_of``."""
        return self.tuning.map_size_of(orig)

    @property
    def probs_dir(self) -> Path:
        return self.folder / files.TEST_PROBS

    def map_path(self, image_id: str) -> Path:
        return self.probs_dir / f"{image_id}.png"


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


def load_predictions(specs: Sequence[tuple[Path, float]]) -> list[Prediction]:
    """Read every folder's tuning.json, normalise the weights; all folders must share the task and original size."""
    if not specs:
        raise PipelineError("no prediction folders given (--preds)")
    folders = [Path(f).resolve() for f, _ in specs]
    if len(set(folders)) < len(folders):
        raise PipelineError(f"--preds names a folder twice: {', '.join(str(f) for f, _ in specs)}")
    total = sum(w for _, w in specs)
    preds = [Prediction(Path(f), w / total, w, tuning_mod.read(Path(f))) for f, w in specs]
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


def missing(pred: Prediction, ids: Sequence[str]) -> list[str]:
    """Test ids (in the given order) with no ``test_probs/<id>.png`` in the folder."""
    folder = pred.probs_dir
    present = {e.name for e in os.scandir(folder)} if folder.is_dir() else set()
    return [i for i in ids if f"{i}.png" not in present]


def check(preds: Sequence[Prediction], ids: Sequence[str]) -> None:
    """Every folder has every test map, made by the models its tuning.json describes, of the size it states."""
    problems = []
    for p in preds:
        if p.probs_dir.is_dir() and not (p.probs_dir / files.PROBS_META).exists():
            raise PipelineError(f"{p.probs_dir}: no {files.PROBS_META}, so nothing says which models made these "
                                f"maps; predict them again: {PREDICT_STAGE} --replace (for that experiment)")
        replace = f"predict them again: {predict_command(p.folder, '--replace')}"
        if p.probs_dir.is_dir() and read_meta(p.probs_dir, replace) != MapsMeta.of(p.tuning):
            raise PipelineError(f"{p.probs_dir}: its maps were made by other models or settings than "
                                f"{p.folder / files.TUNING} describes; {replace}")
        gone = missing(p, ids)
        if gone:
            problems.append(f"{p.probs_dir}: {len(gone)} of {len(ids)} test maps missing: "
                            f"{listing([m + '.png' for m in gone], MAX_LISTED)}")
    if problems:
        raise PipelineError("; ".join(problems) + f"; run {predict_command(preds[0].folder)} (it continues where it "
                            "stopped; with separate --shard K/N jobs, re-run the shards that did not finish)"
                            if len(preds) == 1 else "; ".join(problems) + "; run 03 for each of these experiments "
                            f"({steps(*(predict_command(p.folder) for p in preds))})")
    for p in preds:
        first = read_map(p.map_path(ids[0]))
        head = header(p.map_path(ids[0]))
        expected = p.map_size_of(head[1]) if head is not None and head[1] is not None else p.map_size
        if first.shape != expected:
            raise PipelineError(f"{p.map_path(ids[0])}: map is {first.shape[1]}x{first.shape[0]} but "
                                f"{p.folder / files.TUNING} says {expected[1]}x{expected[0]}; re-run "
                                f"{PREDICT_STAGE}")
