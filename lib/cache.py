"""The training cache: images and masks at the network size, decoded once (no torch here).

``output/cache/<H>x<W>/`` holds, for the training ids in sorted order:
    images.npy  (N, H, W, 3) uint8 RGB at the network size
    masks.npy   (N, H, W)    uint8 soft masks (fraction of car pixels x 255, area-downscaled)
    truth.npy   (N, B)       uint8 full-resolution masks, np.packbits of the flattened (H0, W0) mask
    meta.json   ids, original size, network size
Decoding a 1918 x 1280 JPEG and GIF costs far more than a training step at small sizes;
benchmarks/bench_loader.py measures both paths. 01_prepare.py and 04_submit.py use the cache without
importing torch; lib/data.py builds the training loaders on it.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lib import files
from lib.errors import PipelineError
from lib.geometry import padded_size, to_net
from lib.inputs import image_size, read_image_bytes, read_mask

CACHE_VERSION = 1


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
    image = cv2.imdecode(data, flag)
    if image is None:
        raise PipelineError(f"{path}: not a readable image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if flag == cv2.IMREAD_COLOR:
        return to_net(image, height, width), (h0, w0)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), (h0, w0)


def net_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H0, W0) bool -> (height, width) uint8 soft mask 0..255 (area fraction at edges)."""
    return to_net(mask.astype(np.uint8) * 255, height, width, interpolation=cv2.INTER_AREA)


# --- the cache ---
@dataclass
class Cache:
    ids: list[str]
    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) uint8
    truth: np.ndarray  # (N, B) uint8 packed bits
    orig_size: tuple[int, int]  # (H0, W0)

    def full_mask(self, i: int) -> np.ndarray:
        """(H0, W0) bool full-resolution truth of row i."""
        h0, w0 = self.orig_size
        return np.unpackbits(self.truth[i], count=h0 * w0).reshape(h0, w0).astype(bool)

    def rows(self, ids: list[str]) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.ids)}
        return np.array([index[k] for k in ids], dtype=np.int64)


def _cache_item(job: tuple[Path, Path, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    image_path, mask_path, height, width = job
    image, orig = load_net_image(image_path, height, width)
    mask = read_mask(mask_path)
    return image, net_mask(mask, height, width), np.packbits(mask.ravel()), orig


def build_cache(root: Path, ids: list[str], cache: Path, height: int, width: int, workers: int = 2) -> None:
    """Decode every training image and mask once into ``cache`` (atomically, file by file)."""
    from tqdm import tqdm
    ids = sorted(ids)
    jobs = [(root / files.TRAIN / f"{i}.jpg", root / files.TRAIN_MASKS / files.mask_name(i), height, width)
            for i in ids]
    first = _cache_item(jobs[0])
    n, h0w0 = len(ids), first[3]
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "meta.json").unlink(missing_ok=True)  # written last: arrays without it are never trusted
    arrays = {"images": ((n, height, width, 3), 0), "masks": ((n, height, width), 1), "truth": ((n, first[2].size), 2)}
    with _atomic_arrays(cache, arrays) as out:
        workers = min(workers, os.cpu_count() or 1)
        results = (ProcessPoolExecutor(workers).map(_cache_item, jobs, chunksize=4) if workers > 1
                   else map(_cache_item, jobs))
        for k, item in enumerate(tqdm(results, total=n, desc=f"cache {height}x{width}", leave=False)):
            if item[3] != h0w0:
                raise PipelineError(f"{jobs[k][0]}: size {item[3]} differs from {h0w0}; re-run 01_prepare.py")
            for name, (_, slot) in arrays.items():
                out[name][k] = item[slot]
    meta = {"version": CACHE_VERSION, "ids": ids, "orig_size": list(h0w0), "size": [height, width]}
    files.write_text_atomic(cache / "meta.json", json.dumps(meta))


class _atomic_arrays:
    """Open .npy memmaps under temporary names; rename all on success."""

    def __init__(self, folder: Path, arrays: dict):
        self.folder, self.arrays = folder, arrays

    def __enter__(self) -> dict[str, np.ndarray]:
        self.out = {name: np.lib.format.open_memmap(self.folder / f".{name}.npy.tmp", "w+", np.uint8, shape)
                    for name, (shape, _) in self.arrays.items()}
        return self.out

    def __exit__(self, exc_type, *_) -> None:
        for name, arr in self.out.items():
            arr.flush()
            del arr
            tmp = self.folder / f".{name}.npy.tmp"
            if exc_type is None:
                os.replace(tmp, self.folder / f"{name}.npy")
            else:
                tmp.unlink(missing_ok=True)


def open_cache(root: Path, output: Path, ids: list[str], height: int, width: int, workers: int = 2) -> Cache:
    """The cache for these ids at this size, building it first if missing or stale."""
    folder = files.cache_dir(output, height, width)
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is None or meta.get("version") != CACHE_VERSION or meta["ids"] != sorted(ids):
        print(f"caching {len(ids)} training images at {height}x{width} in {folder}", flush=True)
        build_cache(root, ids, folder, height, width, workers)
        meta = json.loads(meta_path.read_text())
    load = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("images", "masks", "truth")}
    return Cache(meta["ids"], load["images"], load["masks"], load["truth"], tuple(meta["orig_size"]))
