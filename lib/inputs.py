"""Reading and checking the input folder (the Kaggle layout).

``check_train`` reads every training image and mask once (in parallel), and reports every
problem with the file name; it returns one row per image with what later steps need (size,
mask area). Problems are collected and raised together, so the user fixes them in one go.
"""
from __future__ import annotations

import io
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from lib import files, rle
from lib.errors import PipelineError

IMAGE_EXT, MASK_SUFFIX = ".jpg", "_mask.gif"
CAR_VIEW = re.compile(r"(?P<car>.+)_(?P<view>\d+)")  # Carvana ids: <car>_<view>, e.g. 00087a6bd4dc_01
IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}
JPEG_EOI = b"\xff\xd9"
MAX_LISTED = 20  # problems printed before "... and N more"


@dataclass(frozen=True)
class Checked:
    """What reading one training pair found."""
    image_id: str
    height: int = 0
    width: int = 0
    mask_area: int = 0
    rle: str = ""  # the mask's run-length encoding, to compare with train_masks.csv without decoding it again
    problem: str = ""


def read_image_bytes(path: Path) -> bytes:
    """The file's bytes; PipelineError naming the file if it is unreadable, empty or a truncated JPEG."""
    data = _read_bytes(path)
    if data[:2] == b"\xff\xd8" and JPEG_EOI not in data[-16:]:
        raise PipelineError(f"{path}: truncated JPEG (no end-of-image marker); download it again")
    return data


def image_size(raw: bytes, path: Path) -> tuple[int, int]:
    """(H, W) from the image header of ``raw`` (the bytes of ``path``); PipelineError if it has none."""
    try:
        with Image.open(io.BytesIO(raw)) as im:  # reads the header only
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise PipelineError(f"{path}: not a readable image ({e})") from None
    return h, w


def image_header_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the image file's header alone (no decoding), or None if it has none."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError):
        return None
    return h, w


def check_image(path: Path) -> tuple[int, int]:
    """(H, W) of an image that decodes; PipelineError naming the file if it is empty, unreadable or truncated.

    The check decodes every pixel block of the file at 1/8 scale (libjpeg's DCT scaling), which reads the
    whole compressed stream as a full decode does, several times faster.
    """
    raw = read_image_bytes(path)
    size = image_size(raw, path)
    if cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION) is None:
        raise PipelineError(f"{path}: not a readable image")
    return size


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool from a GIF/PNG mask with values {0,1} or {0,255}; PipelineError otherwise.

    A palette image is read through its palette: the mask is what it shows (a palette mapping index 0 to white
    makes index 0 the object), not its palette indices."""
    _read_bytes(path)  # empty-file check with a clear message
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
            palette = np.array(im.getpalette() or [], np.uint8).reshape(-1, 3) if mode == "P" else None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise PipelineError(f"{path}: not a readable mask image ({e})") from None
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise PipelineError(f"{path}: colour mask (mode {mode}); masks must be single-channel binary")
        arr = arr[..., 0]
    # bincount: one pass over the pixels instead of np.unique's sort (this runs on every training mask)
    values = np.flatnonzero(np.bincount(arr.ravel(), minlength=2)) if arr.dtype == np.uint8 else np.unique(arr)
    if palette is not None:
        grey = _grey_palette(path, values, palette)
        values = np.unique(grey[values])
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")
        raise PipelineError(f"{path}: mask is not binary (values {shown}); expected {{0,1}} or {{0,255}}")
    if palette is not None:
        return cv2.LUT(arr, (grey[:256] > 0).astype(np.uint8)).view(bool)
    return arr > 0


def _grey_palette(path: Path, used: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(256,) uint8: the grey value the palette gives each used index; PipelineError for colours that are not grey."""
    if used.max() >= len(palette):
        raise PipelineError(f"{path}: pixel values beyond its palette of {len(palette)} colours")
    colours = palette[used]
    if not (np.all(colours[:, 0] == colours[:, 1]) and np.all(colours[:, 0] == colours[:, 2])):
        raise PipelineError(f"{path}: colour mask (palette colours {colours.tolist()[:4]}); masks must be "
                            "single-channel binary")
    grey = np.zeros(256, np.uint8)
    grey[used] = colours[:, 0]
    return grey


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise PipelineError(f"{path}: empty file (0 bytes)")
    return data


def list_images(folder: Path, suffix: str, notes: list[str]) -> dict[str, Path]:
    """Map image id -> path for the files in ``folder`` ending with ``suffix``.

    Other files are skipped with a note; two files giving the same id are an error.
    """
    if not folder.is_dir():
        raise PipelineError(f"{folder}: folder missing (expected the Kaggle layout: see README)")
    found: dict[str, Path] = {}
    duplicates, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name.lower() in IGNORED or path.name.startswith("."):
            continue
        if not path.is_file() or not path.name.lower().endswith(suffix):
            skipped.append(path.name)
            continue
        key = files.image_id(path.name)
        if key in found:
            duplicates.append(f"{found[key].name} and {path.name}")
        found[key] = path
    if duplicates:
        raise PipelineError(f"{folder}: duplicate image ids: {_listing(duplicates)}")
    if skipped:
        notes.append(f"{folder}: skipped {len(skipped)} file(s) that are not *{suffix}: {_listing(skipped)}")
    if not found:
        others = sorted({Path(n).suffix.lower() for n in skipped if Path(n).suffix})
        held = f"; it holds {len(skipped)} other file(s) ({', '.join(others) or 'no extension'})" if skipped else \
            " (empty folder?)"
        raise PipelineError(f"{folder}: no *{suffix} files{held}; the names must end with {suffix}")
    return found


def _check_pair(args: tuple[str, Path, Path]) -> Checked:
    image_id_, image_path, mask_path = args
    try:
        height, width = check_image(image_path)
        mask = read_mask(mask_path)
    except PipelineError as e:
        return Checked(image_id_, problem=str(e))
    if (height, width) != mask.shape:
        return Checked(image_id_, problem=f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                                         f"{image_path.name} is {width}x{height}")
    return Checked(image_id_, height, width, int(mask.sum()), rle.encode(mask))


def check_train(root: Path, workers: int = 2) -> tuple[pd.DataFrame, list[str]]:
    """Check ``root/train`` against ``root/train_masks`` (and ``train_masks.csv`` where present).

    Returns (table with columns id, car, view, height, width, mask_area; notes worth printing).
    Raises PipelineError listing every problem found.
    """
    notes: list[str] = []
    if not root.is_dir():
        raise PipelineError(f"{root}: input folder missing; run `python 01_prepare.py --demo` for demo "
                            "data or put the Kaggle files there (see README)")
    images = list_images(root / files.TRAIN, IMAGE_EXT, notes)
    masks = list_images(root / files.TRAIN_MASKS, MASK_SUFFIX, notes)
    problems = [f"{images[i]}: image has no mask {files.mask_name(i)} in {root / files.TRAIN_MASKS}"
                for i in sorted(set(images) - set(masks))]
    problems += [f"{masks[i]}: mask has no image {i}{IMAGE_EXT} in {root / files.TRAIN}"
                 for i in sorted(set(masks) - set(images))]
    unnamed = [i for i in sorted(set(images) | set(masks)) if not CAR_VIEW.fullmatch(i)]
    problems += [f"{images.get(i) or masks.get(i)}: name is not <car>_<view> (like 00087a6bd4dc_01.jpg), which the "
                 "car-grouped folds need; rename the file (and its mask)" for i in unnamed]
    ids = sorted((set(images) & set(masks)) - set(unnamed))
    jobs = [(i, images[i], masks[i]) for i in ids]
    from lib.progress import progress
    if workers > 1 and len(jobs) > 8:
        with ProcessPoolExecutor(min(workers, os.cpu_count() or 1)) as pool:
            checked = list(progress(pool.map(_check_pair, jobs, chunksize=8), "check training pairs", total=len(jobs)))
    else:
        checked = [_check_pair(j) for j in progress(jobs, "check training pairs")]
    problems += [c.problem for c in checked if c.problem]
    good = [c for c in checked if not c.problem]
    table = pd.DataFrame([(c.image_id, files.car_of(c.image_id), files.view_of(c.image_id), c.height, c.width,
                           c.mask_area) for c in good],
                         columns=["id", "car", "view", "height", "width", "mask_area"])
    sizes = table.groupby(["height", "width"]).size()
    if len(sizes) > 1:
        common = sizes.idxmax()
        odd = table[(table.height != common[0]) | (table.width != common[1])]
        problems += [f"{images[r.id]}: size {r.width}x{r.height} differs from the others' {common[1]}x{common[0]}"
                     for r in odd.itertuples()]
    empty = table[table.mask_area == 0]
    if len(empty):
        notes.append(f"{len(empty)} mask(s) are empty (no car): {_listing(list(empty.id))}")
    csv_path = root / files.TRAIN_MASKS_CSV
    if csv_path.exists() and not problems:
        problems += _check_train_masks_csv(csv_path, masks, {c.image_id: c.rle for c in good})
    if problems:
        raise PipelineError(f"{len(problems)} problem(s) in {root}:\n  " + "\n  ".join(
            problems[:MAX_LISTED]) + (f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""))
    per_car = table.groupby("car").size()
    if per_car.nunique() > 1 or (len(per_car) and per_car.iloc[0] != 16):
        short = per_car[per_car != per_car.max()]
        notes.append(f"{len(short)} car(s) have fewer views than the others ({per_car.max()}): "
                     f"{_listing([f'{c} ({n})' for c, n in short.items()])}")
    return table.reset_index(drop=True), notes


def _check_train_masks_csv(path: Path, masks: dict[str, Path], rles: dict[str, str]) -> list[str]:
    """``train_masks.csv`` must list exactly the GIFs, with the same masks (``rles``: id -> RLE of its GIF)."""
    df = read_csv(path, ["img", "rle_mask"])
    ids = df.img.map(files.image_id)
    problems = []
    dup = ids[ids.duplicated()]
    if len(dup):
        problems.append(f"{path}: duplicate rows for {_listing(sorted(set(dup)))}")
    missing = sorted(set(ids) - set(masks))
    if missing:
        problems.append(f"{path}: {len(missing)} id(s) with no mask GIF on disk: {_listing(missing)}")
    absent = sorted(set(masks) - set(ids))
    if absent:
        problems.append(f"{path}: {len(absent)} mask GIF(s) not listed: {_listing(absent)}")
    for img, code in zip(ids, df.rle_mask.fillna("")):
        if img not in masks:
            continue
        if rles.get(img) != str(code).strip():
            problems.append(f"{path}: RLE of {img} disagrees with {masks[img].name}")
    return problems


def read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read a CSV that must have exactly these columns (in this order)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not a readable CSV ({e})") from None
    if list(df.columns) != columns:
        raise PipelineError(f"{path}: columns are {list(df.columns)}, expected {columns}")
    return df


def read_metadata(path: Path) -> pd.DataFrame:
    """``metadata.csv`` (optional): one row per car with at least an ``id`` column (make is used if there)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not a readable CSV ({e})") from None
    if "id" not in df.columns:
        raise PipelineError(f"{path}: no 'id' column (columns: {list(df.columns)})")
    return df.drop_duplicates("id")


def read_sample_submission(root: Path) -> list[str]:
    """Test image ids in submission order, from ``root/sample_submission.csv``."""
    path = root / files.SAMPLE_SUBMISSION
    if not path.exists():
        raise PipelineError(f"{path}: missing; it lists the test images (download it from Kaggle)")
    df = read_csv(path, ["img", "rle_mask"])
    ids = df.img.map(files.image_id)
    if ids.duplicated().any():
        raise PipelineError(f"{path}: duplicate ids: {_listing(sorted(set(ids[ids.duplicated()])))}")
    if not len(ids):
        raise PipelineError(f"{path}: no rows")
    return list(ids)


def check_test(root: Path) -> tuple[list[str], dict[str, Path]]:
    """Test ids from sample_submission.csv and their files in test/; every id must be on disk."""
    ids = read_sample_submission(root)
    notes: list[str] = []
    on_disk = list_images(root / files.TEST, IMAGE_EXT, notes)
    missing = [i for i in ids if i not in on_disk]
    if missing:
        raise PipelineError(f"{root / files.TEST}: {len(missing)} of the {len(ids)} images listed in "
                            f"{files.SAMPLE_SUBMISSION} are missing: {_listing(missing)}")
    return ids, {i: on_disk[i] for i in ids}


def _listing(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" ... and {len(items) - n} more" if len(items) > n else "")
