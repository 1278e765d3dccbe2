"""What tiled training reads (``--tile-size``): every training image and its target at the network's scale (the image
shrunk by ``--downscale``), one memory-mapped .npy each, so that a tile is read without decoding the photo.

``output/cache/tiles_<downscale>/`` (``files.tile_cache_dir``), for the training ids in sorted order:
    images/<id>.npy  (h, w, 3) uint8 RGB at the network's scale (``tiles.read_scaled``: libjpeg's reduced decode)
    masks/<id>.npy   (h, w)    uint8 target at that scale (``Task.net_target``: soft mask 0..255, or labels)
    points/<id>.npy  (K, 2)    int32 (y, x) of up to ``FOREGROUND_POINTS`` foreground pixels drawn at random,
                     which --tile-foreground centres tiles on: binary, mask >= 128; multi-class and multi-label, an
                     equal share for each class (label) the image holds (``foreground_points``), so that a class of
                     thin fences is centred as often as one of buildings with a hundred times its pixels
    meta.json        version, ids, downscale, each image's original and scaled size, --mask-suffix, the task, the
                     fingerprints of the sources (written last: arrays without it are never trusted)

A tile of an h x w image costs the pages it covers (``np.load(mmap_mode="r")``), not a decode of the photo. The disk
is 4 bytes per pixel at the network's scale: 01 prints it and refuses before writing when the disk is short. The
cache is keyed like lib/cache.py's: a changed source file, other ids or settings make the stage that opens it build it
again.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from lib import files, imageformat, parallel
from lib.cache import GB, DISK_MARGIN, Sources, pair_paths, sources_record, _prepare_again
from lib.errors import PipelineError
from lib.fingerprint import of_path
from lib.inputs import read_image_bytes, source_fingerprint
from lib.task import Task
from lib.tiles import read_scaled, scaled_size

VERSION = 3  # 2: foreground points drawn per class; 3: images decoded reduced in line with their masks
FOREGROUND_POINTS = 4096  # foreground pixels kept per image for --tile-foreground
_META = {"version": int, "ids": files.ListOf(str), "downscale": float, "orig_sizes": files.ListOf(files.ListOf(int)),
         "sizes": files.ListOf(files.ListOf(int)), "mask_suffix": str, "task": dict, "sources": dict}


class TileCache:
    """The training images and targets at the network's scale, read a window at a time."""

    def __init__(self, folder: Path, ids: list[str], sizes: list[tuple[int, int]]):
        self.folder, self.ids, self.sizes = folder, ids, [tuple(s) for s in sizes]
        self._open: dict[tuple[str, int], np.ndarray] = {}  # (kind, row) -> memmap, opened on first use

    def _array(self, kind: str, row: int) -> np.ndarray:
        key = (kind, row)
        if key not in self._open:
            self._open[key] = np.load(self.folder / kind / f"{self.ids[row]}.npy", mmap_mode="r")
        return self._open[key]

    def __getstate__(self) -> dict:  # to loader workers: paths, not open maps
        return {"folder": self.folder, "ids": self.ids, "sizes": self.sizes, "_open": {}}

    def image(self, row: int) -> np.ndarray:
        """(h, w, 3) uint8 of row ``row`` (a memmap: read as it is used)."""
        return self._array("images", row)

    def mask(self, row: int) -> np.ndarray:
        """(h, w) uint8 target of row ``row`` (a memmap)."""
        return self._array("masks", row)

    def points(self, row: int) -> np.ndarray:
        """(K, 2) int32 (y, x) foreground pixels of row ``row`` (K = 0 for an image without foreground)."""
        return self._array("points", row)


def folder_of(output: Path, downscale: float) -> Path:
    return files.tile_cache_dir(output, downscale)


def disk_bytes(sizes: list[tuple[int, int]]) -> int:
    """Bytes of the cache of images of these network-scale sizes: RGB image plus target, 4 bytes a pixel."""
    return sum(h * w * 4 for h, w in sizes)


def scaled_sizes(orig_sizes: list[tuple[int, int]], downscale: float) -> list[tuple[int, int]]:
    return [scaled_size(h, w, downscale) for h, w in orig_sizes]


def _state(folder: Path, ids: list[str], downscale: float, mask_suffix: str, task: Task,
           sources: Sources | None) -> dict | None:
    """meta.json when the arrays are current for these ids and settings (and sources, when given), else None."""
    path = folder / "meta.json"
    try:
        meta = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or files.schema_problem(meta, _META) is not None:
        return None
    if not (meta["version"] == VERSION and meta["ids"] == ids and meta["downscale"] == float(downscale)
            and meta["mask_suffix"] == mask_suffix and meta["task"] == task.record()):
        return None
    if sources is not None and sources.changed(meta["sources"]) != []:
        return None
    return meta


def foreground_points(target: np.ndarray, task: Task, seed: int, n: int = FOREGROUND_POINTS) -> np.ndarray:
    """(K, 2) int32 (y, x) of up to ``n`` foreground pixels of a ``Task.net_target`` drawn at random: binary, from
    the pixels >= 128; otherwise ``n`` // (classes present) from each class 1..C-1 (multi-label: each label's bit)
    the image holds, a class of fewer pixels drawn with repeats, so that a tile centred on a random point is centred
    on each class the image holds equally often."""
    rng = np.random.default_rng(seed)
    if task.binary:
        groups = [np.argwhere(target >= 128)]
    elif task.multilabel:
        groups = [np.argwhere(target & np.uint8(1 << c)) for c in range(task.classes)]
    else:
        groups = [np.argwhere(target == c) for c in range(1, task.classes)]
    groups = [g for g in groups if len(g)]
    if not groups:
        return np.zeros((0, 2), np.int32)
    if len(groups) == 1 and len(groups[0]) <= n:
        return groups[0].astype(np.int32)
    share = n // len(groups)
    return np.concatenate([g[rng.choice(len(g), share, replace=len(g) < share)] for g in groups]).astype(np.int32)


def _item(job: tuple) -> tuple:
    """Write one image's arrays under ``folder``; (original size, scaled size, fingerprints of image and mask)."""
    folder, image_id, image_file, mask_file, downscale, task, seed = job
    fps = (of_path(image_file), source_fingerprint(mask_file))  # before reading: a file written meanwhile is newer
    image, orig = read_scaled(read_image_bytes(image_file), image_file, downscale)
    truth = task.read_truth(mask_file)
    if task.truth_size(truth) != orig:
        raise PipelineError(f"{mask_file}: mask is {truth.shape[-1]}x{truth.shape[-2]} but its image {image_file.name} "
                            f"is {orig[1]}x{orig[0]}; {_prepare_again()}")
    h, w = image.shape[:2]
    target = task.net_target(truth, h, w)
    del truth
    fg = foreground_points(target, task, seed)
    for kind, array in (("images", image), ("masks", target), ("points", fg)):
        with files.atomic_path(folder / kind / f"{image_id}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array))
    return orig, (h, w), fps


def build(root: Path, output: Path, ids: list[str], downscale: float, workers: int, mask_suffix: str, task: Task,
          sources: Sources) -> None:
    """Write the tile cache of ``ids`` (see the module): the arrays of each image, then meta.json last."""
    from lib.progress import progress
    folder = folder_of(output, downscale)
    (folder / "meta.json").unlink(missing_ok=True)
    for kind in ("images", "masks", "points"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        files.remove_stale_temps(folder / kind)
    paths = pair_paths(root, ids, mask_suffix, task)
    jobs = [(folder, i, image, mask, downscale, task, k) for k, (i, (image, mask)) in enumerate(zip(ids, paths))]
    origs, sizes, fps = [], [], []
    with parallel.ordered(_item, jobs, workers, chunksize=1) as results:
        for orig, size, fp in progress(results, f"cache tiles (downscale {downscale:g})", total=len(ids)):
            origs.append(list(orig))
            sizes.append(list(size))
            fps.append(fp)
    meta = {"version": VERSION, "ids": ids, "downscale": float(downscale), "orig_sizes": origs, "sizes": sizes,
            "mask_suffix": mask_suffix, "task": task.record(), "sources": sources_record(root, paths, fps)}
    files.write_text_atomic(folder / "meta.json", json.dumps(meta))


def disk_line(output: Path, ids: list[str], orig_sizes: list[tuple[int, int]], downscale: float, task: Task,
              mask_suffix: str, sources: Sources | None) -> str:
    """One line saying what the tile cache takes on disk and what this run writes of it; PipelineError, before
    anything is written, when the disk is short."""
    ids = sorted(ids)
    folder = folder_of(output, downscale)
    total = disk_bytes(scaled_sizes(orig_sizes, downscale))
    need = 0 if _state(folder, ids, downscale, mask_suffix, task, sources) else total
    probe = output if output.exists() else next(p for p in output.resolve().parents if p.exists())
    free = shutil.disk_usage(probe).free
    if need * DISK_MARGIN > free:
        raise PipelineError(f"{probe}: {free / GB:.1f} GB free, the tile cache (--downscale {downscale:g}) needs "
                            f"{need * DISK_MARGIN / GB:.1f} GB; free space, raise --downscale or use another --output; "
                            "nothing was written")
    return (f"tile cache: {total / GB:.2f} GB in {folder} (images and targets at 1/{downscale:g} scale, 4 bytes a "
            f"pixel); writes {need / GB:.2f} GB; {free / GB:.1f} GB free")


def open_for(p, ids: list[str], sources: Sources | None = None) -> TileCache:
    """The tile cache of Params ``p`` (--input, --output, --downscale, --mask-suffix, --workers, --lock-timeout)
    for ``ids``, built first where missing or stale (another process building it is waited for)."""
    imageformat.check_tiles(imageformat.format_of(p.output_dir), p.tile_size)
    ids = sorted(ids)
    task = Task.of(p)
    folder = folder_of(p.output_dir, p.downscale)
    sources = sources or Sources(p.input_dir)
    meta = _state(folder, ids, p.downscale, p.mask_suffix, task, sources)
    if meta is None:
        with files.exclusive(p.output_dir / "cache" / files.LOCK, "the cache", wait=p.lock_timeout):
            meta = _state(folder, ids, p.downscale, p.mask_suffix, task, sources)
            if meta is None:
                print(f"caching {len(ids)} training images and masks at 1/{p.downscale:g} scale in {folder}",
                      flush=True)
                build(p.input_dir, p.output_dir, ids, p.downscale, p.workers, p.mask_suffix, task, sources)
                meta = _state(folder, ids, p.downscale, p.mask_suffix, task, None)
    return TileCache(folder, ids, meta["sizes"])
