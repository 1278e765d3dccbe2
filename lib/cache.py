"""What training reads: full-resolution truth (always) and, where it pays, images at the network size (no torch here).

``output/cache/truth/`` (every network size shares it), for the training ids in sorted order:
    truth.npy   (N, B) uint8 full-resolution masks, np.packbits of the flattened (H0, W0) mask of each image (of a
                multi-class set: the bit planes of its labels, ``Task.pack_truth``), at its
                own size (B: the largest image's bytes; smaller images leave the rest of their row 0)
    meta.json   ids, each image's size, the common size (null when sizes differ), --mask-suffix, and the
                fingerprint of every source file (``sources``: image and mask, lib/fingerprint.py)
                (written last: arrays without it are never trusted)
``output/cache/<H>x<W>/``, only when the image cache is on (``--cache``; never with ``--tile-size``: lib/tilecache.py):
    images.npy  (N, H, W, 3) uint8 RGB at the network size; (N, H, W, C) uint8 or uint16 for a training set of
                another format (output/image_format.json, lib/imageformat.py): 16-bit values kept exact, normalised
                on the device like 8-bit ones
    masks.npy   (N, H, W)    uint8 soft masks (fraction of car pixels x 255, area-downscaled), or labels (nearest)
    meta.json   ids, original size, network size, the sources' fingerprints

``--cache auto`` keeps the image cache when it would take at most ``--cache-budget-gb``: at small sizes
decoding a 1918 x 1280 JPEG and GIF costs far more than a training step on a CPU, and the cache is small
(5088 images at 128 x 192: 0.5 GB). At large sizes it would not fit a disk (5088 images at 1280 x 1920:
50 GB), so DataLoader worker processes decode the original JPEG (at 1/2, 1/4 or 1/8 scale where the size
allows) and GIF instead. benchmarks/bench_loader.py and bench_gpu.py measure both paths.

Both caches are keyed by the content of their sources: a cache is current only when it was made for these ids and
settings and every image and mask it was made from still holds the bytes it had (``Sources``: 01_prepare.py compares
the digests of the files it has just read; the other stages stat each file and hash only those whose size or time
changed). A changed source makes whichever stage opens the cache rebuild it, saying which file changed.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib import files, fingerprint, imageformat, kagglecsv, parallel
from lib.errors import PipelineError, listing
from lib.fingerprint import Fingerprint
from lib.imageformat import RGB8, ImageFormat
from lib.inputs import image_header_size, image_size, source_fingerprint, train_pairs
from lib.photos import decode_to_net, read_image_bytes
from lib.task import BINARY, Task
from params import SETTINGS, Params, rerun

CACHE_VERSION = 5  # 3: per-image sizes and the mask suffix in meta.json; 4: the sources' fingerprints; 5: photos
# decoded reduced no longer stretched against their masks (geometry.from_reduced)
DISK_MARGIN = 1.05  # 01_prepare.py refuses unless free space covers what it writes plus this fraction
GB = 1e9


def load_net_image(path: Path, height: int, width: int, fmt: ImageFormat = RGB8
                   ) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image straight to the network size: ((height, width, C) of ``fmt``: uint8 RGB for 8-bit RGB sets,
    original (H0, W0)).

    8-bit RGB uses libjpeg's DCT scaling (decode at 1/2, 1/4 or 1/8) when the target is that much smaller,
    which is several times faster than decoding at full size and resizing.
    """
    return decode_net_image(read_image_bytes(path), path, height, width, fmt)


def decode_net_image(raw: bytes, path: Path, height: int, width: int, fmt: ImageFormat = RGB8
                     ) -> tuple[np.ndarray, tuple[int, int]]:
    """``load_net_image`` of the bytes ``raw`` already read from ``path`` (its size from the header, checked against
    --max-image-mp before decoding; the decoding is ``photos.decode_to_net``, which deploy.py shares, or for other
    formats ``imageformat.net_image``)."""
    size = image_size(raw, path)
    if not fmt.rgb8:
        return imageformat.net_image(raw, path, fmt, height, width)
    return decode_to_net(raw, path, size, height, width), size


# --- what a cache was made from ---
class Sources:
    """The training files under ``root`` as they are now, for checking the fingerprints a cache recorded.

    ``fresh``: relative path -> the fingerprint of the bytes just read (01_prepare.py's check reads every file, so
    its digests are compared directly). Other files are checked by ``fingerprint.recheck`` (stat first), each once
    per process however many caches record it. ``refreshed`` collects the files rewritten with the same bytes (new
    time, same digest), for the records to carry their new time."""

    def __init__(self, root: Path, fresh: dict[str, Fingerprint] | None = None):
        self.root = Path(root)
        self.fresh = fresh or {}
        self.refreshed: dict[str, Fingerprint] = {}
        self._seen: dict[tuple[str, Fingerprint], bool] = {}

    def unchanged(self, rel: str, recorded: Fingerprint) -> bool:
        key = (rel, recorded)
        if key not in self._seen:
            if rel in self.fresh:
                now = self.fresh[rel] if self.fresh[rel].digest == recorded.digest else None
            else:
                now = fingerprint.recheck(self.root / rel, recorded)
            if now is not None and now != recorded:
                self.refreshed[rel] = now
            self._seen[key] = now is not None
        return self._seen[key]

    def changed(self, record: dict | None) -> list[str] | None:
        """The relative paths, among those ``record`` (a meta.json's ``sources``) lists, whose bytes changed; None
        when the record is missing or not of this version (then nothing about the sources is known)."""
        if not isinstance(record, dict) or record.get("algorithm") != fingerprint.ALGORITHM or \
                not isinstance(record.get("files"), dict):
            return None
        changed = []
        for rel, value in record["files"].items():
            recorded = Fingerprint.from_record(value)
            if recorded is None or not self.unchanged(rel, recorded):
                changed.append(rel)
        return changed


def relative(root: Path, path: Path) -> str:
    """``path`` as a sources record names it: relative to the input folder ``root`` (posix)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def checked_sources(root: Path, table) -> dict[str, Fingerprint]:
    """Relative path -> fingerprint of every image and mask ``inputs.check_train`` read (its table's columns)."""
    return {relative(root, path): fp for col in ("image", "mask")
            for path, fp in zip(table[f"{col}_file"], table[f"{col}_fp"])}


def sources_record(root: Path, pairs: list[tuple[Path, Path]], fps: list[tuple[Fingerprint, Fingerprint]]) -> dict:
    """meta.json's ``sources``: the fingerprint of each image and mask, by path relative to ``root``."""
    return {"algorithm": fingerprint.ALGORITHM,
            "files": {relative(root, path): fp.record() for pair, fp_pair in zip(pairs, fps)
                      for path, fp in zip(pair, fp_pair)}}


# --- what training reads ---
@dataclass
class Cache:
    """The training ids (sorted) with their full-resolution truth, and their network-size images and masks:
    from the image cache when it is on (``images`` and ``masks`` set), else decoded on demand by ``item``."""
    root: Path  # the input folder (train/, train_masks/)
    ids: list[str]
    truth: np.ndarray  # (N, B) uint8 packed bits
    orig_size: tuple[int, int] | None  # (H0, W0) of every image; None when the sizes differ (see sizes)
    size: tuple[int, int]  # network (H, W)
    task: Task  # binary masks or class labels (how masks are read, stored and resized)
    images: np.ndarray | None = None  # (N, H, W, C) of image_format when cached
    masks: np.ndarray | None = None  # (N, H, W) uint8 when cached
    sizes: np.ndarray | None = None  # (N, 2) int (H0, W0) of each row; None: every row is orig_size
    mask_suffix: str = ""  # --mask-suffix: how item() finds a row's mask when decoding
    paths: list[tuple[Path, Path]] | None = None  # (image, mask) of each row, found on first use
    image_format: ImageFormat = RGB8  # the training set's (lib/imageformat.py): channels, depth, normalisation

    @property
    def cached(self) -> bool:
        return self.images is not None

    def size_of(self, i: int) -> tuple[int, int]:
        """(H0, W0) of row i's image."""
        if self.sizes is None:
            return self.orig_size
        return int(self.sizes[i][0]), int(self.sizes[i][1])

    def full_mask(self, i: int) -> np.ndarray:
        """(H0, W0) full-resolution truth of row i at its image's own size: bool (binary) or uint8 labels."""
        return self.task.unpack_truth(self.truth[i], self.size_of(i))

    def pair(self, i: int) -> tuple[Path, Path]:
        """(image file, mask file or instance folder) of row i."""
        if self.paths is None:
            self.paths = pair_paths(self.root, self.ids, self.mask_suffix, self.task)
        return self.paths[i]

    def rows(self, ids: list[str]) -> np.ndarray:
        index = {k: i for i, k in enumerate(self.ids)}
        return np.array([index[k] for k in ids], dtype=np.int64)

    def item(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, C) image (uint8 RGB for 8-bit RGB sets), (H, W) uint8 soft mask) of row ``row`` at the network
        size."""
        if self.cached:
            return np.array(self.images[row]), np.array(self.masks[row])  # copies out of the memmaps
        image_file, mask_file = self.pair(row)
        image, orig = load_net_image(image_file, *self.size, self.image_format)
        mask = self.task.read_truth(mask_file)
        expected, size = self.size_of(row), self.task.truth_size(mask)
        if orig != expected or size != orig:
            raise PipelineError(f"{image_file}: image {orig[1]}x{orig[0]} and mask "
                                f"{size[1]}x{size[0]}, but the prepared data is "
                                f"{expected[1]}x{expected[0]}; {_prepare_again()}")
        return image, self.task.net_target(mask, *self.size)


def pair_paths(root: Path, ids: list[str], mask_suffix: str = "", task: Task = BINARY) -> list[tuple[Path, Path]]:
    """(image, mask) of each id in ``root``'s train/ and train_masks/ (lib/layout.py), or its rows of a Kaggle
    train.csv (lib/kagglecsv.py); PipelineError for a missing one, or any bad row of the CSV, naming it."""
    pairs, problems = train_pairs(Path(root), mask_suffix, task=task)
    missing = [i for i in ids if i not in pairs]
    if missing or (problems and kagglecsv.truth_csv(Path(root)) is not None):
        raise PipelineError((problems[0] if problems else f"{root / files.TRAIN}: no image and mask for "
                             f"{missing[0]!r} ({len(missing)} id(s) of the split)") +
                            f"; {_prepare_again()}")
    return [pairs[i] for i in ids]


def projected_bytes(n: int, height: int, width: int, fmt: ImageFormat = RGB8) -> int:
    """Bytes of the image cache for ``n`` images at the network size: image (RGB, or ``fmt``'s) plus soft mask."""
    return n * height * width * (1 + fmt.channels * np.dtype(fmt.dtype).itemsize)


def truth_bytes(n: int, orig_size: tuple[int, int], task: Task) -> int:
    return n * -(-orig_size[0] * orig_size[1] * task.truth_bits // 8)


def use_image_cache(mode: str, n: int, height: int, width: int, budget_gb: float, fmt: ImageFormat = RGB8) -> bool:
    """``--cache`` on / off, or auto: on when the image cache would take at most ``budget_gb``."""
    if mode not in (modes := SETTINGS["cache"].choices):
        raise PipelineError(f"--cache {mode!r}: use one of {', '.join(modes)}")
    return mode == "on" or (mode == "auto" and projected_bytes(n, height, width, fmt) <= budget_gb * GB)


def disk_needed(output: Path, ids: list[str], orig_size: tuple[int, int], height: int, width: int,
                cache_images: bool, mask_suffix: str, task: Task, sources: Sources | None = None,
                fmt: ImageFormat = RGB8) -> dict[str, int]:
    """Bytes the truth and image caches will add under ``output`` (0 for a part already there and current);
    ``orig_size``: the size of the largest image (every truth row takes its bytes); ``sources``: the input files
    (``Sources``), whose fingerprints the caches must match."""
    ids = sorted(ids)
    need = {"truth": 0 if _current(_truth_dir(output), ids, mask_suffix, task, sources)
            else truth_bytes(len(ids), orig_size, task),
            "images": 0}
    if cache_images and not _current(files.cache_dir(output, height, width), ids, mask_suffix, task, sources, fmt):
        need["images"] = projected_bytes(len(ids), height, width, fmt)
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
                            f"free space, or run {rerun('--cache', 'off')} (decode images while training), or use "
                            "another --output; nothing was written")
    return line


# --- building ---
def _truth_dir(output: Path) -> Path:
    return output / "cache" / "truth"


# what build_cache writes in a folder's meta.json and open_cache reads back (the image folder's adds "size")
_META = {"version": int, "ids": files.ListOf(str), "mask_suffix": str, "orig_size": (files.ListOf(int), type(None)),
         "sizes?": files.ListOf(files.ListOf(int)), "task?": dict}


def _current(folder: Path, ids: list[str], mask_suffix: str, task: Task,
             sources: Sources | None = None, fmt: ImageFormat = RGB8) -> dict | None:
    """The folder's meta.json if it holds this version's arrays for exactly ``ids`` (sorted) with masks found by
    ``mask_suffix``, made from the bytes its ``sources`` still hold (checked when ``sources`` is given), with
    images of ``fmt`` (image folders), else None."""
    meta, why = _state(folder, ids, mask_suffix, task, sources, fmt)
    return meta if not why else None


def _pixels(fmt: ImageFormat) -> list | None:
    """What an image folder's meta.json records of its images' format: nothing for 8-bit RGB (as before)."""
    return None if fmt.rgb8 else [fmt.channels, fmt.dtype]


def _state(folder: Path, ids: list[str], mask_suffix: str, task: Task, sources: Sources | None,
           fmt: ImageFormat = RGB8) -> tuple[dict | None, str]:
    """(the folder's meta.json or None, why its arrays cannot be used: "" when they are current)."""
    path = folder / "meta.json"
    try:
        meta = json.loads(path.read_text()) if path.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "unreadable meta.json"
    if not isinstance(meta, dict):
        return None, "no cache"
    if files.schema_problem(meta, _META) is not None:  # damaged: stale, built again
        return None, "damaged meta.json"
    if not (meta.get("version") == CACHE_VERSION and meta.get("ids") == ids and
            meta.get("mask_suffix") == mask_suffix and meta.get("task") == task.record() and
            meta.get("pixels") == _pixels(fmt)):
        return meta, "made by another version, for other ids or settings"
    if sources is not None:
        changed = sources.changed(meta.get("sources"))
        if changed is None:
            return meta, "no fingerprints of its sources"
        if changed:
            total = len(meta["sources"]["files"])
            return meta, (f"{len(changed)} of {total} sources changed since the cache was made "
                          f"({listing([str(sources.root / rel) for rel in changed], 3)})")
    return meta, ""


def _prepare_again() -> str:
    """The advice for training files that differ from what 01_prepare.py checked: its check names the problem and
    what to do, and a sound input gets a new split and cache."""
    from params import command
    return f"check and prepare the input again: {command('01_prepare.py', '--force')}"


def _item(job: tuple[Path, Path, int, int, bool, Task, bool, ImageFormat]) -> tuple:
    """(packed truth, (H0, W0), fingerprints of (image, mask) or None, [network-size image, network-size mask])."""
    image_file, mask_file, height, width, with_images, task, with_fps, fmt = job
    fps = None
    if with_fps:  # before reading: a file written meanwhile then has a newer time than the one recorded
        try:
            fps = (fingerprint.of_path(image_file), source_fingerprint(mask_file))
        except OSError as e:
            raise PipelineError(f"{e.filename}: cannot read ({e.strerror}); {_prepare_again()}") from None
    mask = task.read_truth(mask_file)
    if not with_images:
        return task.pack_truth(mask), task.truth_size(mask), fps
    image, orig = load_net_image(image_file, height, width, fmt)
    if task.truth_size(mask) != orig:
        raise PipelineError(f"{mask_file}: mask is {mask.shape[-1]}x{mask.shape[-2]} but its image is "
                            f"{orig[1]}x{orig[0]}; {_prepare_again()}")
    return task.pack_truth(mask), orig, fps, image, task.net_target(mask, height, width)


def image_sizes(paths: list[Path]) -> list[tuple[int, int]]:
    """(H0, W0) of each image from its header; PipelineError naming an unreadable one."""
    sizes = []
    for path in paths:
        size = image_header_size(path)
        if size is None:
            raise PipelineError(f"{path}: not a readable image; {_prepare_again()}")
        sizes.append(size)
    return sizes


def common_size(sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The size every image has, or None when they differ."""
    return tuple(sizes[0]) if sizes and all(tuple(s) == tuple(sizes[0]) for s in sizes) else None


def build_cache(root: Path, ids: list[str], output: Path, height: int, width: int, workers: int = 2,
                truth: bool = True, images: bool = True, mask_suffix: str = "", task: Task = BINARY,
                sources: Sources | None = None, fmt: ImageFormat = RGB8) -> None:
    """Decode every training mask (and, with ``images``, image) once into the truth and image caches.

    meta.json records the fingerprint of every image and mask: those ``sources`` read (01_prepare.py's check),
    else taken here as each file is read. Each folder's arrays are written under temporary names and renamed, then
    its meta.json last."""
    from lib.progress import progress
    ids = sorted(ids)
    folders = {"truth": _truth_dir(output) if truth else None,
               "images": files.cache_dir(output, height, width) if images else None}
    paths = pair_paths(root, ids, mask_suffix, task)
    sizes = image_sizes([image for image, _ in paths])
    fresh = sources.fresh if sources is not None else {}
    known = [(fresh.get(relative(root, image)), fresh.get(relative(root, mask))) for image, mask in paths]
    with_fps = not all(a and b for a, b in known)
    jobs = [(image, mask, height, width, images, task, with_fps, fmt) for image, mask in paths]
    n = len(ids)
    arrays = {}
    if truth:
        arrays["truth"] = (folders["truth"], (n, -(-max(h * w for h, w in sizes) * task.truth_bits // 8)), 0,
                           np.uint8)
    if images:
        arrays |= {"images": (folders["images"], (n, height, width, fmt.channels), 3, np.dtype(fmt.dtype)),
                   "masks": (folders["images"], (n, height, width), 4, np.uint8)}
    for folder in {f for f in folders.values() if f is not None}:
        folder.mkdir(parents=True, exist_ok=True)
        files.remove_stale_temps(folder)  # the arrays of a killed build
        (folder / "meta.json").unlink(missing_ok=True)  # written last: arrays without it are never trusted
    with _atomic_arrays(arrays) as out, parallel.ordered(_item, jobs, workers, chunksize=4) as results:
        desc = "cache " + " and ".join(name for name, on in (("truth", truth), ("images", images)) if on)
        for k, item in enumerate(progress(results, desc, total=n)):
            if tuple(item[1]) != tuple(sizes[k]):
                raise PipelineError(f"{paths[k][1]}: mask is {item[1][1]}x{item[1][0]} but its image "
                                    f"{paths[k][0].name} is {sizes[k][1]}x{sizes[k][0]}; {_prepare_again()}")
            if with_fps:
                known[k] = item[2]
            for name, (_, _, slot, _) in arrays.items():
                if name == "truth":
                    out[name][k, :item[0].size] = item[0]
                else:
                    out[name][k] = item[slot]
    common = common_size(sizes)
    meta = {"version": CACHE_VERSION, "ids": ids, "orig_size": list(common) if common else None,
            "sizes": [list(hw) for hw in sizes], "mask_suffix": mask_suffix, "task": task.record(),
            "sources": sources_record(Path(root), paths, known)}
    if truth:
        files.write_text_atomic(folders["truth"] / "meta.json", json.dumps(meta))
    if images:
        pixels = {"pixels": _pixels(fmt)} if not fmt.rgb8 else {}
        files.write_text_atomic(folders["images"] / "meta.json", json.dumps(meta | {"size": [height, width]} | pixels))


@contextlib.contextmanager
def _atomic_arrays(arrays: dict) -> Iterator[dict[str, np.ndarray]]:
    """.npy memmaps (name -> (folder, shape, slot, dtype)) under files.atomic_path's temporary names; all renamed to
    ``<folder>/<name>.npy`` on success, all deleted on an error."""
    with contextlib.ExitStack() as stack:
        tmps = {name: stack.enter_context(files.atomic_path(folder / f"{name}.npy"))
                for name, (folder, _, _, _) in arrays.items()}
        out = {name: np.lib.format.open_memmap(tmps[name], "w+", dtype, shape)
               for name, (_, shape, _, dtype) in arrays.items()}
        try:
            yield out
        finally:
            for arr in out.values():
                arr.flush()
            out.clear()  # the maps are closed before the renames


def open_cache(root: Path, output: Path, ids: list[str], height: int, width: int, workers: int = 2,
               mode: str = "auto", budget_gb: float = 2.0, mask_suffix: str = "", task: Task = BINARY,
               lock_timeout: float = Params.lock_timeout, sources: Sources | None = None,
               fmt: ImageFormat = RGB8) -> Cache:
    """The training data for these ids at this size, building the truth (and the image cache, when ``mode``
    selects it) first where missing, stale or made from files that changed since (``sources``: the files as 01 just
    read them; default: checked here, stat first). Another process building it is waited for, up to
    ``lock_timeout`` seconds (--lock-timeout). ``fmt``: the training images' format (lib/imageformat.py)."""
    ids = sorted(ids)
    sources = sources or Sources(root)
    cache_images = use_image_cache(mode, len(ids), height, width, budget_gb, fmt)
    folders = [_truth_dir(output)] + ([files.cache_dir(output, height, width)] if cache_images else [])
    stale = any(_current(folder, ids, mask_suffix, task, sources, fmt if folder != folders[0] else RGB8) is None
                for folder in folders)
    if stale or sources.refreshed:
        # another process (a fold trained side by side) may be building it: wait for it, then look again
        with files.exclusive(output / "cache" / files.LOCK, "the cache", wait=lock_timeout):
            if stale:
                _build_missing(root, output, ids, height, width, workers, cache_images, mask_suffix, task, sources,
                               fmt)
            if sources.refreshed:  # files rewritten with the same bytes: record their new times (no hash next time)
                _refresh(folders, ids, mask_suffix, task, sources, fmt)
    truth_meta = _current(_truth_dir(output), ids, mask_suffix, task)
    common = truth_meta["orig_size"]
    cache = Cache(Path(root), ids, np.load(_truth_dir(output) / "truth.npy", mmap_mode="r"),
                  tuple(common) if common else None, (height, width),
                  sizes=None if common else np.array(truth_meta["sizes"], np.int64), mask_suffix=mask_suffix,
                  task=task, image_format=fmt)
    if cache_images:
        folder = files.cache_dir(output, height, width)
        cache.images = np.load(folder / "images.npy", mmap_mode="r")
        cache.masks = np.load(folder / "masks.npy", mmap_mode="r")
    return cache


def _refresh(folders: list[Path], ids: list[str], mask_suffix: str, task: Task, sources: Sources,
             fmt: ImageFormat = RGB8) -> None:
    """Rewrite the meta.json of current caches with the new times of files rewritten with the same bytes."""
    for k, folder in enumerate(folders):
        meta = _current(folder, ids, mask_suffix, task, sources, fmt if k else RGB8)  # folders[0]: the truth
        if meta is not None:
            for rel, fp in sources.refreshed.items():
                if rel in meta["sources"]["files"]:
                    meta["sources"]["files"][rel] = fp.record()
            files.write_text_atomic(folder / "meta.json", json.dumps(meta))


def _build_missing(root: Path, output: Path, ids: list[str], height: int, width: int, workers: int,
                   cache_images: bool, mask_suffix: str, task: Task, sources: Sources, fmt: ImageFormat = RGB8
                   ) -> None:
    truth_meta, truth_why = _state(_truth_dir(output), ids, mask_suffix, task, sources)
    image_meta, image_why = (_state(files.cache_dir(output, height, width), ids, mask_suffix, task, sources, fmt)
                             if cache_images else (None, ""))
    truth_meta = None if truth_why else truth_meta
    image_meta = None if image_why else image_meta
    changed = next((why for why in (truth_why, image_why) if "sources changed" in why), "")
    if changed:
        print(f"cache: {changed}: rebuilding", flush=True)
    if truth_meta is None or (cache_images and image_meta is None):
        what = "truth and images" if cache_images else "truth"
        print(f"caching the {what} of {len(ids)} training images"
              + (f" at {height}x{width} in {files.cache_dir(output, height, width)}" if cache_images
                 else f" in {_truth_dir(output)}"), flush=True)
        build_cache(root, ids, output, height, width, workers, truth=truth_meta is None,
                    images=cache_images and image_meta is None, mask_suffix=mask_suffix, task=task, sources=sources,
                    fmt=fmt)


def image_cache(p) -> str:
    """The --cache mode of Params ``p``: "off" with --tile-size (tiles come from the tile cache)."""
    return "off" if p.tile_size else p.cache


def open_for(p, ids: list[str], height: int | None = None, width: int | None = None,
             sources: Sources | None = None) -> Cache:
    """``open_cache`` with a run's settings (Params ``p``: input, output, workers, --cache, --cache-budget-gb,
    --mask-suffix, --lock-timeout), at ``height`` x ``width`` (default the run's size). With --tile-size the
    network-size image cache is off: tiles are read from lib/tilecache.py's."""
    return open_cache(p.input_dir, p.output_dir, ids, height or p.height, width or p.width, p.workers, image_cache(p),
                      p.cache_budget_gb, p.mask_suffix, Task.of(p), p.lock_timeout, sources,
                      imageformat.format_of(p.output_dir))
