"""What training reads: full-resolution truth (always) and, where it pays, images at the network size (no torch here).

``output/cache/truth/`` (every network size shares it), for the training ids in sorted order:
    truth.npy   (N, B) uint8 full-resolution masks, np.packbits of the flattened (H0, W0) mask
    meta.json   ids, original size (written last: arrays without it are never trusted)
``output/cache/<H>x<W>/``, only when the image cache is on (``--cache``):
    images.npy  (N, H, W, 3) uint8 RGB at the network size
    masks.npy   (N, H, W)    uint8 soft masks (fraction of car pixels x 255, area-downscaled)
    meta.json   ids, original size, network size

``--cache auto`` keeps the image cache when it would take at most ``--cache-budget-gb``: at small sizes
decoding a 1918 x 1280 JPEG and GIF costs far more than a training step on a CPU, and the cache is small
(5088 images at 128 x 192: 0.5 GB). At large sizes it would not fit a disk (5088 images at 1280 x 1920:
50 GB), so DataLoader worker processes decode the original JPEG (at 1/2, 1/4 or 1/8 scale where the size
allows) and GIF instead. benchmarks/bench_loader.py and bench_gpu.py measure both paths.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lib import files
from lib.errors import PipelineError
from lib.geometry import padded_size, to_net
from lib.inputs import image_size, read_image_bytes, read_mask

CACHE_VERSION = 2
CACHE_MODES = ("auto", "on", "off")
DISK_MARGIN = 1.05  # 01_prepare.py refuses unless free space covers what it writes plus this fraction
GB = 1e9


def load_net_image(path: Path, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a JPEG straight to the network size: ((height, width, 3) uint8 RGB, original (H0, W0)).

    Uses libjpeg's DCT scaling (decode at 1/2, 1/4 or 1/8) when the target is that much smaller,
    which is several times faster than decoding at full size and resizing.
    """
    raw = read_image_bytes(path)
    h0, w0 = image_size(raw, path)
    data = np.frombuffer(raw, np.uint8)
    flag = cv2.IMREAD_COLOR
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if h0 // factor >= height and w0 // factor >= width and (height, width) != padded_size(h0, w0):
            flag = reduced
            break
    image = cv2.imdecode(data, flag | cv2.IMREAD_IGNORE_ORIENTATION)  # as stored, like its mask and PIL's size
    if image is None:
        raise PipelineError(f"{path}: not a readable image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if flag == cv2.IMREAD_COLOR:
        return to_net(image, height, width), (h0, w0)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), (h0, w0)


def net_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H0, W0) bool -> (height, width) uint8 soft mask 0..255 (area fraction at edges)."""
    return to_net(mask.astype(np.uint8) * 255, height, width, interpolation=cv2.INTER_AREA)


def image_path(root: Path, image_id: str) -> Path:
    return root / files.TRAIN / f"{image_id}.jpg"


def mask_path(root: Path, image_id: str) -> Path:
    return root / files.TRAIN_MASKS / files.mask_name(image_id)


# --- what training reads ---
@dataclass
class Cache:
    """The training ids (sorted) with their full-resolution truth, and their network-size images and masks:
    from the image cache when it is on (``images`` and ``masks`` set), else decoded on demand by ``item``."""
    root: Path  # the input folder (train/, train_masks/)
    ids: list[str]
    truth: np.ndarray  # (N, B) uint8 packed bits
    orig_size: tuple[int, int]  # (H0, W0)
    size: tuple[int, int]  # network (H, W)
    images: np.ndarray | None = None  # (N, H, W, 3) uint8 when cached
    masks: np.ndarray | None = None  # (N, H, W) uint8 when cached

    @property
    def cached(self) -> bool:
        return self.images is not None

    def full_mask(self, i: int) -> np.ndarray:
        """(H0, W0) bool full-resolution truth of row i."""
        h0, w0 = self.orig_size
        return np.unpackbits(self.truth[i], count=h0 * w0).reshape(h0, w0).astype(bool)

    def rows(self, ids: list[str]) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.ids)}
        return np.array([index[k] for k in ids], dtype=np.int64)

    def item(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, 3) uint8 RGB image, (H, W) uint8 soft mask) of row ``row`` at the network size."""
        if self.cached:
            return np.array(self.images[row]), np.array(self.masks[row])  # copies out of the memmaps
        image_id = self.ids[row]
        image, orig = load_net_image(image_path(self.root, image_id), *self.size)
        mask = read_mask(mask_path(self.root, image_id))
        if orig != self.orig_size or mask.shape != orig:
            raise PipelineError(f"{image_path(self.root, image_id)}: image {orig[1]}x{orig[0]} and mask "
                                f"{mask.shape[1]}x{mask.shape[0]}, but the prepared data is "
                                f"{self.orig_size[1]}x{self.orig_size[0]}; re-run 01_prepare.py --force")
        return image, net_mask(mask, *self.size)


def projected_bytes(n: int, height: int, width: int) -> int:
    """Bytes of the image cache for ``n`` images at the network size: RGB image plus soft mask."""
    return n * height * width * 4


def truth_bytes(n: int, orig_size: tuple[int, int]) -> int:
    return n * -(-orig_size[0] * orig_size[1] // 8)


def use_image_cache(mode: str, n: int, height: int, width: int, budget_gb: float) -> bool:
    """``--cache`` on / off, or auto: on when the image cache would take at most ``budget_gb``."""
    if mode not in CACHE_MODES:
        raise PipelineError(f"--cache {mode!r}: use one of {', '.join(CACHE_MODES)}")
    return mode == "on" or (mode == "auto" and projected_bytes(n, height, width) <= budget_gb * GB)


def disk_needed(output: Path, ids: list[str], orig_size: tuple[int, int], height: int, width: int,
                cache_images: bool) -> dict[str, int]:
    """Bytes the truth and image caches will add under ``output`` (0 for a part already there and current)."""
    ids = sorted(ids)
    need = {"truth": 0 if _current(_truth_dir(output), ids) else truth_bytes(len(ids), orig_size),
            "images": 0}
    if cache_images and not _current(files.cache_dir(output, height, width), ids):
        need["images"] = projected_bytes(len(ids), height, width)
    return need


def check_free_space(output: Path, need: dict[str, int]) -> str:
    """One line saying what will be written; PipelineError, before anything is written, when the disk is short."""
    total = sum(need.values())
    probe = output if output.exists() else next(p for p in output.resolve().parents if p.exists())
    free = shutil.disk_usage(probe).free
    line = (f"cache: writes {total / GB:.2f} GB (truth {need['truth'] / GB:.2f} GB, network-size images "
            f"{need['images'] / GB:.2f} GB); {free / GB:.1f} GB free on {probe}")
    if total * DISK_MARGIN > free:
        raise PipelineError(f"{probe}: {free / GB:.1f} GB free, the cache needs {total * DISK_MARGIN / GB:.1f} GB; "
                            "free space, or re-run with --cache off (decode images while training) or another "
                            "--output; nothing was written")
    return line


# --- building ---
def _truth_dir(output: Path) -> Path:
    return output / "cache" / "truth"


def _current(folder: Path, ids: list[str]) -> dict | None:
    """The folder's meta.json if it holds this version's arrays for exactly ``ids`` (sorted), else None."""
    path = folder / "meta.json"
    try:
        meta = json.loads(path.read_text()) if path.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return meta if meta and meta.get("version") == CACHE_VERSION and meta.get("ids") == ids else None


def _item(job: tuple[Path, str, int, int, bool]) -> tuple:
    root, image_id, height, width, with_images = job
    mask = read_mask(mask_path(root, image_id))
    if not with_images:
        return np.packbits(mask.ravel()), mask.shape
    image, orig = load_net_image(image_path(root, image_id), height, width)
    if mask.shape != orig:
        raise PipelineError(f"{mask_path(root, image_id)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                            f"{orig[1]}x{orig[0]}; re-run 01_prepare.py")
    return np.packbits(mask.ravel()), orig, image, net_mask(mask, height, width)


def build_cache(root: Path, ids: list[str], output: Path, height: int, width: int, workers: int = 2,
                truth: bool = True, images: bool = True) -> None:
    """Decode every training mask (and, with ``images``, image) once into the truth and image caches.

    Each folder's arrays are written under temporary names and renamed, then its meta.json last."""
    from lib.progress import progress
    ids = sorted(ids)
    folders = {"truth": _truth_dir(output) if truth else None,
               "images": files.cache_dir(output, height, width) if images else None}
    jobs = [(root, i, height, width, images) for i in ids]
    first = _item(jobs[0])
    n, h0w0 = len(ids), tuple(first[1])
    arrays = {}
    if truth:
        arrays["truth"] = (folders["truth"], (n, first[0].size), 0)
    if images:
        arrays |= {"images": (folders["images"], (n, height, width, 3), 2),
                   "masks": (folders["images"], (n, height, width), 3)}
    for folder in {f for f in folders.values() if f is not None}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)  # written last: arrays without it are never trusted
    with _atomic_arrays(arrays) as out:
        workers = min(workers, os.cpu_count() or 1)
        pool = ProcessPoolExecutor(workers) if workers > 1 else None
        results = pool.map(_item, jobs, chunksize=4) if pool else map(_item, jobs)
        try:
            desc = "cache " + " and ".join(name for name, on in (("truth", truth), ("images", images)) if on)
            for k, item in enumerate(progress(results, desc, total=n)):
                if tuple(item[1]) != h0w0:
                    raise PipelineError(f"{image_path(root, ids[k])}: size {tuple(item[1])} differs from {h0w0}; "
                                        "re-run 01_prepare.py")
                for name, (_, _, slot) in arrays.items():
                    out[name][k] = item[slot]
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
    meta = {"version": CACHE_VERSION, "ids": ids, "orig_size": list(h0w0)}
    if truth:
        files.write_text_atomic(folders["truth"] / "meta.json", json.dumps(meta))
    if images:
        files.write_text_atomic(folders["images"] / "meta.json", json.dumps(meta | {"size": [height, width]}))


class _atomic_arrays:
    """Open .npy memmaps under temporary names; rename all on success."""

    def __init__(self, arrays: dict):
        self.arrays = arrays  # name -> (folder, shape, slot)

    def __enter__(self) -> dict[str, np.ndarray]:
        self.out = {name: np.lib.format.open_memmap(folder / f".{name}.npy.tmp", "w+", np.uint8, shape)
                    for name, (folder, shape, _) in self.arrays.items()}
        return self.out

    def __exit__(self, exc_type, *_) -> None:
        for name, arr in self.out.items():
            arr.flush()
            del arr
            folder = self.arrays[name][0]
            tmp = folder / f".{name}.npy.tmp"
            if exc_type is None:
                os.replace(tmp, folder / f"{name}.npy")
            else:
                tmp.unlink(missing_ok=True)


def open_cache(root: Path, output: Path, ids: list[str], height: int, width: int, workers: int = 2,
               mode: str = "auto", budget_gb: float = 2.0) -> Cache:
    """The training data for these ids at this size, building the truth (and the image cache, when ``mode``
    selects it) first where missing or stale."""
    ids = sorted(ids)
    cache_images = use_image_cache(mode, len(ids), height, width, budget_gb)
    if _current(_truth_dir(output), ids) is None or (
            cache_images and _current(files.cache_dir(output, height, width), ids) is None):
        # another process (a fold trained side by side) may be building it: wait for it, then look again
        with files.exclusive(output / "cache" / files.LOCK, "the cache", wait=True):
            _build_missing(root, output, ids, height, width, workers, cache_images)
    truth_meta = _current(_truth_dir(output), ids)
    cache = Cache(Path(root), ids, np.load(_truth_dir(output) / "truth.npy", mmap_mode="r"),
                  tuple(truth_meta["orig_size"]), (height, width))
    if cache_images:
        folder = files.cache_dir(output, height, width)
        cache.images = np.load(folder / "images.npy", mmap_mode="r")
        cache.masks = np.load(folder / "masks.npy", mmap_mode="r")
    return cache


def _build_missing(root: Path, output: Path, ids: list[str], height: int, width: int, workers: int,
                   cache_images: bool) -> None:
    truth_meta = _current(_truth_dir(output), ids)
    image_meta = _current(files.cache_dir(output, height, width), ids) if cache_images else None
    if truth_meta is None or (cache_images and image_meta is None):
        what = "truth and images" if cache_images else "truth"
        print(f"caching the {what} of {len(ids)} training images"
              + (f" at {height}x{width} in {files.cache_dir(output, height, width)}" if cache_images
                 else f" in {_truth_dir(output)}"), flush=True)
        build_cache(root, ids, output, height, width, workers, truth=truth_meta is None,
                    images=cache_images and image_meta is None)


def open_for(p, ids: list[str], height: int | None = None, width: int | None = None) -> Cache:
    """``open_cache`` with a run's settings (Params ``p``: input, output, workers, --cache, --cache-budget-gb), at
    ``height`` x ``width`` (default the run's size)."""
    return open_cache(p.input_dir, p.output_dir, ids, height or p.height, width or p.width, p.workers, p.cache,
                      p.cache_budget_gb)
