"""Out-of-fold maps: network-size uint8 probabilities of a fold's validation images, their file, and their score.

Training writes ``oof.npz`` for its best model; 03_predict.py tunes on it. The maps are stored as PNG (lossless,
about 20 times smaller than raw: 1018 full-size validation maps of a Kaggle fold take about 0.1 GB instead of 2.5),
encoded where they are made (on each rank) and decoded one at a time where they are read. Scores are Kaggle's: each
map is brought back to the original size, thresholded, and scored per image against the full-resolution truth.
"""
from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator, Sequence
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lib import files, postprocess
from lib.errors import PipelineError
from lib.geometry import from_net
from lib.metrics import dice_histograms, level_of
from lib.task import Task

_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]  # as test maps


class PngMaps(Sequence):
    """(H, W) uint8 maps kept as PNG bytes in one buffer; decoded one at a time on access."""

    def __init__(self, blob: np.ndarray, ends: np.ndarray):
        self.blob, self.ends = blob, ends  # uint8 buffer; int64 end offset of each map in it

    @classmethod
    def encode(cls, maps: np.ndarray) -> "PngMaps":
        """(N, H, W) uint8 -> PngMaps."""
        parts = []
        for m in maps:
            ok, png = cv2.imencode(".png", np.ascontiguousarray(m), _PNG)
            if not ok:
                raise OSError("could not encode an out-of-fold map")
            parts.append(png.reshape(-1))
        ends = np.cumsum([len(p) for p in parts], dtype=np.int64)
        return cls(np.concatenate(parts) if parts else np.zeros(0, np.uint8), ends)

    @classmethod
    def join(cls, parts: Sequence["PngMaps"]) -> "PngMaps":
        """The maps of ``parts`` one after another (the chunks of the ranks, in rank order)."""
        blobs, ends, offset = [], [], 0
        for p in parts:
            blobs.append(p.blob)
            ends.append(p.ends + offset)
            offset += len(p.blob)
        return cls(np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
                   np.concatenate(ends) if ends else np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        start = int(self.ends[i - 1]) if i > 0 else 0
        m = cv2.imdecode(self.blob[start:int(self.ends[i])], cv2.IMREAD_UNCHANGED)
        if m is None:
            raise PipelineError("a damaged out-of-fold map; train its fold again (02_train.py --restart)")
        return m

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def array(self) -> np.ndarray:
        """All maps as one (N, H, W) array (small sets only: tests, the demo)."""
        return np.stack(list(self))


def at_size(m: np.ndarray, task: Task, height: int, width: int) -> np.ndarray:
    """A stored network-size map (channels * h, w) uint8 -> (channels, height, width) at an image's own size."""
    return np.stack([from_net(c, height, width) for c in task.split_map(m)])


def class_dices(probs_u8: Sequence[np.ndarray], cache, rows: np.ndarray, threshold: float, task: Task,
                post: str = postprocess.NONE, min_area: float | Sequence[float] = 0.0) -> np.ndarray:
    """(N, S) full-resolution Dice of each map against row ``rows[i]`` of ``cache`` at its
    image's own size, for each scored class of the ``task``'s decision (``Task.decide``: S = 1 binary, at
    ``threshold`` after post-processing ``post``, gated at ``min_area``; S = C - 1 multi-class, of the argmax, each
    class gated at its ``min_area``)."""
    level = level_of(threshold) if np.isscalar(threshold) else [level_of(t) for t in threshold]  # multi-label: each
    return np.array([task.class_dices(task.decide(at_size(pr, task, *cache.size_of(r)), level, post, min_area),
                                      cache.full_mask(r))
                     for pr, r in zip(probs_u8, rows)], dtype=np.float64).reshape(-1, len(task.scored))


def image_dices(probs_u8: Sequence[np.ndarray], cache, rows: np.ndarray, threshold: float, task: Task,
                post: str = postprocess.NONE, min_area: float | Sequence[float] = 0.0) -> np.ndarray:
    """(N,) full-resolution score of each map: Dice at ``threshold`` after post-processing ``post``, gated at
    ``min_area`` (binary) or the mean Dice of the classes of the argmax (multi-class)."""
    return class_dices(probs_u8, cache, rows, threshold, task, post, min_area).mean(axis=1)


def oof_histograms(probs_u8: Sequence[np.ndarray], cache, rows: np.ndarray,
                   posts: Sequence[str] = (postprocess.NONE,)) -> dict[str, np.ndarray]:
    """{post-processing: (N, 2, 256) Dice histograms} of network-size binary maps brought back to each image's own
    size, then post-processed (lib/postprocess.py) each way in ``posts``."""
    hists: dict[str, list[np.ndarray]] = {post: [] for post in posts}
    for pr, r in zip(probs_u8, rows):
        full, truth = from_net(pr, *cache.size_of(r)), cache.full_mask(r)
        done: list[tuple[np.ndarray, np.ndarray]] = []  # (map, histograms): a post-processing that changed nothing
        for post in posts:                                # returns the very same array, counted once
            m = postprocess.apply(post, full)
            same = [h for seen, h in done if seen is m]
            done += [] if same else [(m, dice_histograms(m, truth))]
            hists[post].append(same[0] if same else done[-1][1])
    return {post: np.stack(h) if h else np.zeros((0, 2, 256), np.int64) for post, h in hists.items()}


def class_areas(probs_u8: Sequence[np.ndarray], cache, rows: np.ndarray, task: Task) -> np.ndarray:
    """(N, S, 4) ``metrics.AREA_STATS`` of each scored class of a multi-class task's ungated argmax: the maps
    (C * h, w) uint8 brought back to each image's own size, decided, counted against row ``rows[i]`` of ``cache``
    (``Task.class_areas``): every minimum area of every class is scored from them (``Task.class_min_areas``)."""
    out = [task.class_areas(task.decide(at_size(pr, task, *cache.size_of(r)), 0), cache.full_mask(r))
           for pr, r in zip(probs_u8, rows)]
    return np.stack(out) if out else np.zeros((0, len(task.scored), 4), np.int64)


def label_histograms(probs_u8: Sequence[np.ndarray], cache, rows: np.ndarray, task: Task) -> np.ndarray:
    """(N, C, 2, 256) Dice histograms of each label of a multi-label task: the maps (C * h, w) uint8 brought back to
    each image's own size, counted against row ``rows[i]`` of ``cache`` (C, H, W) bool, a label at a time."""
    out = [np.stack([dice_histograms(m, t) for m, t in zip(at_size(pr, task, *cache.size_of(r)), cache.full_mask(r))])
           for pr, r in zip(probs_u8, rows)]
    return np.stack(out) if out else np.zeros((0, task.classes, 2, 256), np.int64)


@dataclass
class OutOfFold:
    """A fold's out-of-fold maps and what made them."""
    ids: list[str]  # the fold's validation images, sorted
    probs: Sequence[np.ndarray]  # N maps (H, W) uint8 (PngMaps)
    model: str  # state_digest of the model that predicted them ("" if unrecorded)
    split: str  # folds.fold_digest of the split they belong to ("" if unrecorded)
    tiling: dict = dataclasses.field(default_factory=dict)  # Tiling.record() of sliding-window maps; {}: whole images


def save_oof(path: Path, ids: list[str], maps: PngMaps, model: str = "", split: str = "",
             tiling: dict | None = None) -> None:
    """``tiling``: the Tiling.record() of maps predicted by sliding window (each at its image's scaled size)."""
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(ids), png=maps.blob, ends=maps.ends, model=np.array(model), split=np.array(split),
             tiling=np.array(json.dumps(tiling or {})))
    files.write_bytes_atomic(path, buf.getvalue())


OOF_ADVICE = "03_predict.py predicts the out-of-fold maps of a damaged file again from the fold's model.pt"


def load_oof(path: Path, advice: str = OOF_ADVICE) -> OutOfFold:
    """A fold's oof.npz (``save_oof``), checked before use: the arrays, their types and shapes, and each map's PNG
    header (all 8-bit grey maps of one size); the zip's checksums catch damaged bytes. PipelineError
    ``<path>: <what is wrong>; <advice>`` otherwise."""
    def fail(problem: str) -> PipelineError:
        return PipelineError(f"{path}: {problem}" + (f"; {advice}" if advice else ""))
    from params import command
    if not path.exists():
        raise PipelineError(f"{path}: no out-of-fold predictions; train this fold first: "
                            f"{command('02_train.py', '--fold', path.parent.name.removeprefix('fold'))}")
    if path.stat().st_size == 0:
        raise fail("empty (0 bytes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}  # every member read whole: its CRC is checked
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile, AttributeError) as e:
        raise fail(f"corrupt out-of-fold file ({type(e).__name__}: {str(e).strip()[:160]})") from None
    problem = _oof_problem(arrays)
    if problem:
        raise fail(f"damaged or not written by 02_train.py: {problem}")
    maps = PngMaps(arrays["png"], arrays["ends"]) if "png" in arrays else arrays["probs"]  # raw: older versions
    return OutOfFold(list(arrays["ids"]), maps, str(arrays.get("model", "")), str(arrays.get("split", "")),
                     _tiling(arrays))


def _tiling(a: dict[str, np.ndarray]) -> dict:
    """The tiling record of an oof.npz's arrays ({} when absent: whole-image maps); ValueError when unreadable."""
    if "tiling" not in a:
        return {}
    record = json.loads(str(a["tiling"]))
    if not isinstance(record, dict):
        raise ValueError("not a dict")
    return record


def _oof_problem(a: dict[str, np.ndarray]) -> str | None:
    """What is wrong with the arrays of an oof.npz, or None."""
    ids = a.get("ids")
    if ids is None or ids.ndim != 1 or ids.dtype.kind != "U":
        return "no 1-D array of image ids 'ids'"
    for name in ("model", "split", "tiling"):
        if name in a and (a[name].ndim != 0 or a[name].dtype.kind != "U"):
            return f"{name!r} is not a string"
    if "png" not in a:
        probs = a.get("probs")
        if probs is None or probs.dtype != np.uint8 or probs.ndim != 3 or len(probs) != len(ids):
            return f"no maps: neither 'png' and 'ends' nor a (N={len(ids)}, H, W) uint8 'probs'"
        return None
    blob, ends = a["png"], a.get("ends")
    if blob.dtype != np.uint8 or blob.ndim != 1 or ends is None or ends.dtype.kind not in "iu" or ends.ndim != 1:
        return "'png' is not a 1-D uint8 buffer with a 1-D integer array 'ends' of offsets"
    if len(ends) != len(ids):
        return f"{len(ends)} maps for {len(ids)} image ids"
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    if len(ends) and (np.any(ends < starts + 33) or int(ends[-1]) != len(blob)):
        return f"the map offsets 'ends' do not divide its {len(blob)}-byte buffer into PNG files"
    sizes = set()
    for i, start in enumerate(starts.tolist()):
        head = blob[start:start + 33].tobytes()
        if head[:8] != files.PNG_SIGNATURE or head[12:16] != b"IHDR" or head[24:26] != b"\x08\x00":
            return f"map {i} ({ids[i]}) is not an 8-bit grey PNG"
        sizes.add((int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")))
    try:
        tiled = bool(_tiling(a))
    except ValueError:
        return "'tiling' is not a JSON record"
    if len(sizes) > 1 and not tiled:  # sliding-window maps are each at their image's scaled size
        return f"maps of different sizes {sorted(sizes)}"
    return None
