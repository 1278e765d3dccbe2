"""Reading and checking the input folder (the Kaggle layout).

``check_train`` reads every training image and mask once (in parallel), and reports every
problem with the file name; it returns one row per image with what later steps need (size,
mask area). Problems are collected and raised together, so the user fixes them in one go.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from lib import files, fingerprint, imageformat, kagglecsv, layout, parallel
from lib.errors import PipelineError, listing
from lib.fingerprint import Fingerprint
from lib.photos import read_image_bytes
from lib.task import BINARY, Task

Image.MAX_IMAGE_PIXELS = None  # PIL's decompression-bomb traceback gives way to the --max-image-mp check (max_pixels)
MAX_LISTED = 20  # problems printed before "... and N more"


@dataclass(frozen=True)
class Checked:
    """What reading one training pair found."""
    image_id: str
    height: int = 0
    width: int = 0
    mask_area: int = 0
    rle: str | None = None  # Task.truth_rle: to compare with train_masks.csv without decoding it again
    class_pixels: tuple[int, ...] = ()  # Task.class_pixels: multi-class, the pixels of each class
    problem: str = ""
    image_fp: Fingerprint | None = None  # the image and mask file (or instance folder) as they were read
    mask_fp: Fingerprint | None = None


def max_pixels() -> float:
    """The most pixels an image may have (--max-image-mp, which params.parse passes to every process it starts)."""
    from params import MAX_IMAGE_MP_ENV, Params
    return float(os.environ.get(MAX_IMAGE_MP_ENV, Params.max_image_mp)) * 1e6


def check_pixels(path: Path, height: int, width: int) -> None:
    """PipelineError naming ``path`` when a (height, width) image is larger than --max-image-mp allows: every image
    is decoded whole, so a huge one would exhaust memory (or trip PIL's decompression-bomb guard)."""
    limit = max_pixels()
    if height * width > limit:
        from params import rerun
        mp = height * width / 1e6
        raise PipelineError(f"{path}: {width}x{height} is {mp:.4g} megapixels, above --max-image-mp {limit / 1e6:g} "
                            f"(images are decoded whole); downscale it, or where memory allows (about "
                            f"{mp * 3 * 4 / 1e3:.1f} GB a process) raise the limit for every stage: "
                            f"{rerun('--max-image-mp', str(int(mp) + 1))}")


def image_size(raw: bytes, path: Path) -> tuple[int, int]:
    """(H, W) from the image header of ``raw`` (the bytes of ``path``); PipelineError if it has none or is larger than
    --max-image-mp."""
    try:
        with Image.open(io.BytesIO(raw)) as im:  # reads the header only
            w, h = im.size
    except UnidentifiedImageError:  # PIL's words name its BytesIO object, not the file
        if (size := imageformat.tiff_size(raw)) is not None:  # a TIFF of more bands than PIL reads
            check_pixels(path, *size)
            return size
        raise PipelineError(f"{path}: not a readable image (its first bytes {raw[:8]!r} begin no image format)") from None
    except OSError as e:
        raise PipelineError(f"{path}: not a readable image ({e})") from None
    check_pixels(path, h, w)
    return h, w


def image_header_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the image file's header alone (no decoding), or None if it has none; PipelineError if it is larger
    than --max-image-mp."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError):
        size = imageformat.tiff_size(files.read_bytes(path)) if path.suffix.lower() in imageformat.TIFF_EXTS else None
        if size is not None:  # a TIFF of more bands than PIL reads
            check_pixels(path, *size)
        return size
    check_pixels(path, h, w)
    return h, w


def check_image(path: Path) -> tuple[int, int]:
    """(H, W) of an image that decodes; PipelineError naming the file if it is empty, unreadable or truncated.

    The check decodes every pixel block of the file at 1/8 scale (libjpeg's DCT scaling), which reads the
    whole compressed stream as a full decode does, several times faster.
    """
    return check_image_bytes(read_image_bytes(path), path)


def check_image_bytes(raw: bytes, path: Path) -> tuple[int, int]:
    """``check_image`` of the bytes ``raw`` already read from ``path``."""
    size = image_size(raw, path)
    if raw[:4] in imageformat.TIFF_MAGIC:  # any band count and depth: tifffile decodes it whole
        imageformat.read_pixels(raw, path)
        return size
    if cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION) is None:
        raise PipelineError(f"{path}: not a readable image")
    return size


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool from a GIF/PNG/TIF/BMP mask with values {0,1} or {0,255}, or from an instance folder (the union
    of the binary masks in it, one per object); PipelineError naming the file otherwise.

    A palette image is read through its palette: the mask is what it shows (a palette mapping index 0 to white
    makes index 0 the object), not its palette indices."""
    if path.is_dir():
        return read_instances(path)
    files.read_bytes(path)  # empty-file check with a clear message
    try:
        with Image.open(path) as im:
            check_pixels(path, im.height, im.width)
            mode = im.mode
            arr = np.array(im)
            palette = np.array(im.getpalette() or [], np.uint8).reshape(-1, 3) if mode == "P" else None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise PipelineError(f"{path}: not a readable mask image ({e})") from None
    if arr.ndim == 3:
        arr = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]  # an alpha channel is not the mask
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, arr.shape[2])):
            raise PipelineError(f"{path}: colour mask (mode {mode}); masks must be single-channel binary, or for "
                                "classes give --classes C --class-colors FILE to every stage")
        arr = arr[..., 0]
    # bincount: one pass over the pixels instead of np.unique's sort (this runs on every training mask)
    values = np.flatnonzero(np.bincount(arr.ravel(), minlength=2)) if arr.dtype == np.uint8 else np.unique(arr)
    if palette is not None:
        grey = _grey_palette(path, values, palette)
        values = np.unique(grey[values])
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(map(str, values[:8])) + (" ..." if len(values) > 8 else "")
        raise PipelineError(f"{path}: mask is not binary (values {shown}); expected {{0,1}} or {{0,255}}: save it "
                            "as a 0/255 (or 0/1) single-channel PNG, or for class labels 0..C-1 give --classes C "
                            "(and --class-colors FILE) to every stage")
    if palette is not None:
        return cv2.LUT(arr, (grey[:256] > 0).astype(np.uint8)).view(bool)
    return arr > 0


def read_instances(folder: Path) -> np.ndarray:
    """(H, W) bool union of the binary instance masks in ``folder`` (one file per object), all of one size."""
    paths = layout.instance_files(folder)
    union = read_mask(paths[0]).copy()
    for path in paths[1:]:
        mask = read_mask(path)
        if mask.shape != union.shape:
            raise PipelineError(f"{path}: instance mask is {mask.shape[1]}x{mask.shape[0]} but {paths[0].name} in "
                                f"the same folder is {union.shape[1]}x{union.shape[0]}; instances of one image share "
                                "its size")
        union |= mask
    return union


def read_labels(path: Path, classes: int, colors: tuple = ()) -> np.ndarray:
    """(H, W) uint8 class labels 0..classes-1 of a multi-class mask; PipelineError naming the file otherwise.

    - a single-channel image (8 or 16 bit): its values are the classes;
    - a palette image: its index is the class (the VOC convention), whatever colours the palette shows;
    - an RGB(A) image: each colour is looked up in ``colors`` (--class-colors: the RGB of each class in order);
    - an instance folder: files ``<anything>__<class name>.<ext>`` (``classes`` of them named by ``colors``' names,
      see ``read_class_instances``) -- handled by the caller, which knows the names.
    """
    files.read_bytes(path)
    try:
        with Image.open(path) as im:
            check_pixels(path, im.height, im.width)
            mode = im.mode
            arr = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise PipelineError(f"{path}: not a readable mask image ({e})") from None
    if arr.ndim == 3:
        rgb = arr[..., :3]
        if all(np.array_equal(rgb[..., 0], rgb[..., c]) for c in (1, 2)):
            arr = rgb[..., 0]  # grey stored as RGB
        elif not colors:
            raise PipelineError(f"{path}: colour mask (mode {mode}) and no --class-colors to map its colours to "
                                "classes; give --class-colors FILE (name,r,g,b per class)")
        else:
            return _labels_of_colours(path, rgb, colors)
    values = np.flatnonzero(np.bincount(arr.ravel().astype(np.int64), minlength=1))
    if len(values) and values.max() >= classes:
        bad = values[values >= classes]
        raise PipelineError(f"{path}: label values {', '.join(map(str, bad[:6]))} outside 0..{classes - 1} "
                            f"(--classes {classes}); give the right --classes, or save the mask with class indices")
    return arr.astype(np.uint8)


def _labels_of_colours(path: Path, rgb: np.ndarray, colors: tuple) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colors], np.int32)
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
    labels = order[pos].astype(np.uint8)
    unknown = keys[labels] != code
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        raise PipelineError(f"{path}: {int(unknown.sum())} pixels of colours that --class-colors does not list, "
                            f"e.g. {tuple(int(v) for v in rgb[y, x])} at x={x}, y={y}; add the colour to the file "
                            "or repaint those pixels")
    return labels


def _named_instances(folder: Path, names: Sequence[str], first: int) -> list[tuple[int, np.ndarray, str]]:
    """(index in ``names``, (H, W) bool mask, the file) of each file ``<anything>__<name>.<ext>`` of an instance folder,
    in name order; PipelineError naming the file when its name is not one of ``names[first:]`` or its size differs."""
    paths = layout.instance_files(folder)
    out: list[tuple[int, np.ndarray, str]] = []
    for path in paths:
        stem = path.name.rsplit(".", 1)[0]
        name = stem.rpartition("__")[2] if "__" in stem else None
        if name not in names or names.index(name) < first:
            raise PipelineError(f"{path}: an instance file of a multi-class set is named <anything>__<class>.<ext> "
                                f"with a class of {', '.join(names[first:])}; rename it")
        mask = read_mask(path)
        if out and mask.shape != out[0][1].shape:
            shape = out[0][1].shape
            raise PipelineError(f"{path}: instance mask is {mask.shape[1]}x{mask.shape[0]} but {paths[0].name} in "
                                f"the same folder is {shape[1]}x{shape[0]}")
        out.append((names.index(name), mask, str(path)))
    return out


def read_class_instances(folder: Path, names: Sequence[str]) -> np.ndarray:
    """(H, W) uint8 labels from an instance folder of a multi-class set: each file ``<anything>__<class name>.<ext>``
    is a binary mask of one object of that class (``paint_classes``: objects of one class may overlap, objects of
    two classes may not)."""
    masks = _named_instances(folder, names, first=1)
    return paint_classes(masks[0][1].shape, masks, names)


def paint_classes(shape: tuple[int, int], masks: Sequence[tuple[int, np.ndarray, str]], names: Sequence[str]
                  ) -> np.ndarray:
    """(H, W) uint8 labels of a multi-class image from the (class index, (H, W) bool mask, where it comes from) of
    each object: each object painted with its class. Objects of one class may overlap; a pixel in objects of two
    classes is a PipelineError naming both, the pixels they share and the --multilabel command that keeps both (one
    class per pixel cannot)."""
    labels = np.zeros(shape, np.uint8)
    for k, (index, mask, source) in enumerate(masks):
        if np.any(mask & (labels != 0) & (labels != index)):
            other, other_mask, other_source = next(m for m in masks[:k] if m[0] != index and np.any(m[1] & mask))
            shared = int(np.count_nonzero(mask & other_mask))
            raise PipelineError(f"{source}: its {names[index]} overlaps the {names[other]} of {other_source} in "
                                f"{shared} pixels, and one class per pixel cannot hold both; "
                                f"{_multilabel_advice(names)}")
        labels[mask] = index
    return labels


def _multilabel_advice(names: Sequence[str]) -> str:
    """How a multi-class set (``names``: class 0 the background first) whose classes overlap is prepared instead: its
    classes 1..C-1 as C-1 overlapping labels (the background is no label), named as before."""
    from lib.task import MAX_LABELS
    from params import command
    labels = list(names[1:])
    if len(labels) > MAX_LABELS:
        return (f"--multilabel keeps overlaps but takes at most {MAX_LABELS} labels, and there are {len(labels)}: "
                "repaint the masks so that objects of two classes do not overlap")
    return ("to keep overlapping labels, prepare with --multilabel (and give the same flags to every stage): "
            + command("01_prepare.py", "--classes", str(len(labels)), "--multilabel", "--class-names",
                      ",".join(labels), drop=("class_colors",)))


def read_csv_truth(source: kagglecsv.CsvTruth, task: Task) -> np.ndarray:
    """The truth of one training image from its ``train.csv`` rows (lib/kagglecsv.py): (C, H, W) bool with overlaps
    kept (multi-label) or (H, W) uint8 labels (multi-class, ``paint_classes``); PipelineError naming the line of a
    bad row."""
    size, masks = source.masks()
    if task.multilabel:
        truth = np.zeros((task.classes, *size), bool)
        for _, c, mask in masks:
            truth[c] |= mask
        return truth
    if task.binary:
        raise PipelineError(f"{source.csv}: per-class RLE rows, read as binary masks; give --classes C to every stage")
    objects = [(c, mask, f"{source.csv} line {line} ({source.image.name})") for line, c, mask in masks]
    return paint_classes(size, objects, task.names)


def read_label_instances(folder: Path, names: Sequence[str]) -> np.ndarray:
    """(C, H, W) bool truth of a multi-label set (``--multilabel``) from an instance folder: each file
    ``<anything>__<label name>.<ext>`` is a binary mask of one object with that label; overlaps are kept (a pixel
    holds every label whose masks cover it)."""
    masks = _named_instances(folder, names, first=0)
    truth = np.zeros((len(names), *masks[0][1].shape), bool)
    for index, mask, _ in masks:
        truth[index] |= mask
    return truth


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


def _check_pair(args: tuple) -> Checked:
    image_id_, image_path, mask_path, rle_order, task = args
    try:
        before = _stat(image_path)  # then read: the fingerprint is of these bytes, or older than them
        raw = read_image_bytes(image_path)
        height, width = check_image_bytes(raw, image_path)
        mask = task.read_truth(mask_path)
        mask_fp = source_fingerprint(mask_path)  # the bytes read_truth just read (page cache; train.csv: as parsed)
    except PipelineError as e:
        return Checked(image_id_, problem=str(e))
    except OSError as e:  # the mask, gone since it was read
        return Checked(image_id_, problem=f"{e.filename or mask_path}: cannot read ({e.strerror})")
    sources = {"image_fp": fingerprint.of_bytes(raw, before), "mask_fp": mask_fp}
    if (height, width) != task.truth_size(mask):
        return Checked(image_id_, problem=f"{mask_path}: mask is {mask.shape[-1]}x{mask.shape[-2]} but its image "
                                         f"{image_path.name} is {width}x{height}")
    return Checked(image_id_, height, width, int(np.count_nonzero(mask)), task.truth_rle(mask, rle_order),
                   task.class_pixels(mask), **sources)


def source_fingerprint(mask) -> Fingerprint:
    """The fingerprint of a training mask file or instance folder (read and hashed now), or of the ``train.csv`` a
    ``kagglecsv.CsvTruth`` comes from (as its rows were read). OSError if it is missing."""
    if isinstance(mask, kagglecsv.CsvTruth):
        return mask.fingerprint
    return fingerprint.of_path(mask)


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None


def train_pairs(root: Path, mask_suffix: str = "", notes: list[str] | None = None, task: Task = BINARY
                ) -> tuple[dict[str, tuple[Path, Path]], list[str]]:
    """id -> (image, mask file or instance folder) for the training images that have a mask, and the problems
    (images without a mask, masks without an image, ambiguous masks), one line each naming the file. Without a
    ``train_masks/`` folder, a Kaggle ``train.csv`` of per-class RLE rows (lib/kagglecsv.py) gives every image its
    truth (a ``kagglecsv.CsvTruth`` in place of the mask; the problems are its bad rows)."""
    notes = [] if notes is None else notes
    images = layout.list_images(root / files.TRAIN, notes)
    csv_path = kagglecsv.truth_csv(root)
    if csv_path is not None:
        truth, problems = kagglecsv.train_truth(csv_path, images, task, notes)
        return {i: (images[i], truth[i]) for i in sorted(images)}, problems
    masks, ambiguous, strays = layout.match_masks(sorted(images), root / files.TRAIN_MASKS, mask_suffix, notes)
    if not masks and not ambiguous:
        held = f"; it holds {len(strays)} other mask(s) such as {strays[0].name} (give --mask-suffix)" if strays else ""
        raise PipelineError(f"{root / files.TRAIN_MASKS}: no mask for any of the {len(images)} images in "
                            f"{root / files.TRAIN}; expected e.g. {layout.mask_hint(min(images), mask_suffix)}{held}")
    problems = ambiguous + [layout.stray_line(path, mask_suffix, root / files.TRAIN) for path in strays]
    problems = [f"{images[i]}: image has no mask {layout.mask_hint(i, mask_suffix)} in {root / files.TRAIN_MASKS}"
                for i in sorted(set(images) - set(masks))] + problems
    return {i: (images[i], masks[i]) for i in sorted(masks)}, problems


def check_train(root: Path, workers: int = 2, mask_suffix: str = "", group_regex: str = "",
                rle_order: str = "row", task: Task = BINARY) -> tuple[pd.DataFrame, list[str]]:
    """Check ``root/train`` against ``root/train_masks`` (and ``train_masks.csv`` where present, read in
    ``rle_order``), and group the ids for the folds (``lib.layout.groups_of``).

    Returns (table with columns id, car (the group), view (0 without views), height, width, mask_area, image_file,
    mask_file, image_fp, mask_fp (the files' ``Fingerprint`` as read); notes worth printing). Raises PipelineError
    listing every problem found.
    """
    notes: list[str] = []
    if not root.is_dir():
        import params
        raise PipelineError(f"{root}: input folder missing; run {params.command('01_prepare.py', '--demo')} for demo "
                            "data or put the Kaggle files there (see README)")
    pairs, problems = train_pairs(root, mask_suffix, notes, task)
    csv_path = kagglecsv.truth_csv(root)
    if csv_path is not None:  # the truth is its rows: read in Kaggle's pixel order, as the submission is written
        kagglecsv.check_order(csv_path, rle_order)
    elif (root / files.TRAIN_CSV).is_file():
        notes.append(f"{root / files.TRAIN_CSV} is not read: {root / files.TRAIN_MASKS}/ holds the masks")
    ids = sorted(pairs)
    groups = layout.groups_of(ids, group_regex)  # a bad --group-regex is refused before any image is read
    jobs = [(i, *pairs[i], rle_order, task) for i in ids]
    from lib.progress import progress
    with parallel.ordered(_check_pair, jobs, workers if len(jobs) > 8 else 0, chunksize=8) as results:
        checked = list(progress(results, "check training pairs", total=len(jobs)))
    problems += [c.problem for c in checked if c.problem]
    group_of = dict(zip(ids, zip(groups.groups, groups.views)))
    good = [c for c in checked if not c.problem]
    table = pd.DataFrame([(c.image_id, *group_of[c.image_id], c.height, c.width, c.mask_area, *pairs[c.image_id],
                           c.image_fp, c.mask_fp) for c in good],
                         columns=["id", "car", "view", "height", "width", "mask_area", "image_file", "mask_file",
                                  "image_fp", "mask_fp"])
    sizes = table.groupby(["height", "width"]).size().sort_values(ascending=False)
    if len(sizes) > 1:
        notes.append(f"image sizes differ ({len(sizes)} sizes; most common {sizes.index[0][1]}x{sizes.index[0][0]} "
                     f"for {sizes.iloc[0]} images): each is brought to the network size and its prediction back")
    instances = [i for i in ids if isinstance(pairs[i][1], Path) and pairs[i][1].is_dir()]
    if instances:
        merged = "a label per mask, overlaps kept" if task.multilabel else "the union of its masks"
        notes.append(f"{len(instances)} image(s) take their mask from an instance folder ({merged}): "
                     f"{listing(instances)}")
    notes += task.class_notes([c.class_pixels for c in good])
    empty = table[table.mask_area == 0]
    if len(empty):
        notes.append(f"{len(empty)} mask(s) are empty (no object): {listing(list(empty.id))}")
    csv_path = root / files.TRAIN_MASKS_CSV
    rles = {c.image_id: c.rle for c in good if c.rle is not None}  # binary masks only (Task.truth_rle)
    if csv_path.exists() and not problems and rles:
        problems += _check_train_masks_csv(csv_path, {i: m for i, (_, m) in pairs.items()}, rles)
    if problems:
        raise PipelineError(f"{len(problems)} problem(s) in {root}:\n  "
                            + listing(problems, MAX_LISTED, "\n  ", "\n  ... and {} more"))
    per_car = table.groupby("car").size()
    if groups.has_views and (per_car.nunique() > 1 or (len(per_car) and per_car.iloc[0] != 16)):
        short = per_car[per_car != per_car.max()]
        notes.append(f"{len(short)} car(s) have fewer views than the others ({per_car.max()}): "
                     f"{listing([f'{c} ({n})' for c, n in short.items()])}")
    return table.reset_index(drop=True), notes


def _check_train_masks_csv(path: Path, masks: dict[str, Path], rles: dict[str, str]) -> list[str]:
    """``train_masks.csv`` must list exactly the GIFs, with the same masks (``rles``: id -> RLE of its GIF)."""
    df = read_csv(path, ["img", "rle_mask"])
    ids = df.img.map(files.image_id)
    problems = []
    dup = ids[ids.duplicated()]
    if len(dup):
        problems.append(f"{path}: duplicate rows for {listing(sorted(set(dup)))}")
    missing = sorted(set(ids) - set(masks))
    if missing:
        problems.append(f"{path}: {len(missing)} id(s) with no mask GIF on disk: {listing(missing)}")
    absent = sorted(set(masks) - set(ids))
    if absent:
        problems.append(f"{path}: {len(absent)} mask GIF(s) not listed: {listing(absent)}")
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
    return sample_submission_rows(root)[0]


def sample_submission_rows(root: Path) -> tuple[list[str], list[str]]:
    """(test image ids, the ``img`` value of each row) in submission order, from ``root/sample_submission.csv``."""
    path = root / files.SAMPLE_SUBMISSION
    if not path.exists():
        raise PipelineError(f"{path}: missing; it lists the test images (download it from Kaggle)")
    df = read_csv(path, ["img", "rle_mask"])
    ids = df.img.map(files.image_id)
    if ids.duplicated().any():
        raise PipelineError(f"{path}: duplicate ids: {listing(sorted(set(ids[ids.duplicated()])))}")
    if not len(ids):
        raise PipelineError(f"{path}: no rows")
    return list(ids), list(df.img)


def test_rows(root: Path) -> tuple[list[str], list[str]]:
    """(test ids, the submission row key of each) in submission order: sample_submission.csv's rows when there is
    one, else every image in ``test/`` sorted by id, keyed by its file name (``img,rle_mask`` rows as Carvana's).
    ([], []) when there is neither."""
    if (root / files.SAMPLE_SUBMISSION).exists():
        return sample_submission_rows(root)
    if not (root / files.TEST).is_dir():
        return [], []
    on_disk = layout.list_images(root / files.TEST, [])
    ids = sorted(on_disk)
    return ids, [on_disk[i].name for i in ids]


def check_test(root: Path, task: Task = BINARY) -> tuple[list[str], dict[str, Path]]:
    """Test ids in submission order and their files in test/: the ids of sample_submission.csv (every one must be on
    disk; for a multi-class ``task`` the images of its ``<image id>_<class>`` rows), or without one every image in
    test/, sorted by id."""
    notes: list[str] = []
    on_disk = layout.list_images(root / files.TEST, notes)
    if not (root / files.SAMPLE_SUBMISSION).exists():
        ids = sorted(on_disk)
        return ids, {i: on_disk[i] for i in ids}
    ids = task.submission_rows(root)[0]
    missing = [i for i in ids if i not in on_disk]
    if missing:
        raise PipelineError(f"{root / files.TEST}: {len(missing)} of the {len(ids)} images listed in "
                            f"{files.SAMPLE_SUBMISSION} are missing: {listing(missing)}")
    return ids, {i: on_disk[i] for i in ids}


def test_files(root: Path) -> dict[str, str]:
    """Test id -> its file name in ``root/test`` ({} without the folder)."""
    if not (root / files.TEST).is_dir():
        return {}
    return {i: path.name for i, path in layout.list_images(root / files.TEST, []).items()}


def test_sizes(root: Path, ids: list[str], names: dict[str, str], common: tuple[int, int] | None
               ) -> list[tuple[int, int]]:
    """(H0, W0) of each test image from its header (``names``: id -> file name in test/); an image not on disk is
    taken to have the training images' ``common`` size, and without one that is a PipelineError naming it."""
    sizes = []
    for i in ids:
        size = image_header_size(root / files.TEST / names[i]) if i in names else common
        if size is None:
            where = root / files.TEST / names.get(i, i)
            raise PipelineError(f"{where}: missing or unreadable, and the training images differ in size, so the size "
                                f"of its baseline mask is unknown; put the test images in {root / files.TEST}")
        sizes.append(size)
    return sizes


def test_class_rows(root: Path, task: Task) -> tuple[list[str], list[str], list[tuple[str, int]]]:
    """Multi-class submission rows: (test image ids in first-row order, row ids, (image id, class) of each row).

    With sample_submission.csv its rows in its form (lib/kagglecsv.py): ``img,rle_mask`` rows ``<image id>_<class
    name>`` of a class 1..C-1 (a multi-label task's ``<file name>_<label name>``; the longest class name that ends the
    row id wins), or Kaggle's: Severstal's ``ImageId,ClassId`` columns or ``ImageId_ClassId`` rows (ClassId k: label
    k-1, or class k), Clouds' ``Image_Label`` rows ``<file name>_<label name>``; the row id of the three-column form is
    ``<ImageId>_<ClassId>``. Without one every test image sorted by id, each with a row per class in class order.
    """
    path = root / files.SAMPLE_SUBMISSION
    if not path.exists():
        ids, file_names = test_rows(root)
        keys = [key for i, name in zip(ids, file_names) for key in task.row_ids(name, i)]
        return ids, keys, [(i, c) for i in ids for c in task.scored]
    table = kagglecsv.read_table(path)
    keys = [key for _, key, _ in table.rows]
    pairs, bad = [], []
    for key in keys:
        image, part = kagglecsv.split(key, table.form, task)
        c = kagglecsv.class_index(part, table.form, task) if image else None
        if c is None:
            bad.append(key)
        else:
            pairs.append((files.image_id(image) if task.multilabel or table.form.kaggle else image, c))
    if bad:
        what = (f"ClassIds 1..{len(task.scored)}" if table.form.class_id else
                f"a class of {', '.join(task.names[c] for c in task.scored)}")
        raise PipelineError(f"{path}: rows {listing(bad)} are not {kagglecsv.row_form(table.form, task)} with {what} "
                            "(--classes, --class-colors/--class-names)")
    if len(set(keys)) != len(keys):
        raise PipelineError(f"{path}: duplicate row ids")
    return list(dict.fromkeys(i for i, _ in pairs)), keys, pairs
