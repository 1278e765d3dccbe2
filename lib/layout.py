"""How a dataset names its files: the image ids, the mask of each image, and the groups the folds keep together.

The Kaggle layout stays (``train/``, ``train_masks/``, ``test/``, optional ``sample_submission.csv``); the names in it
may be any:
    train/<id>.<ext>                 ext jpg, jpeg, png, tif, tiff or bmp, any letter case; the id is the name
                                     without its extension, so it may hold dots, spaces and any Unicode
    train_masks/<id><suffix>.<ext>   ext png, gif, tif, tiff or bmp: a binary mask (0/1 or 0/255)
    train_masks/<id><suffix>/        or a folder of binary masks, one per object: their union is the mask
``suffix`` is ``--mask-suffix``; empty means auto: ``_mask`` (Carvana's ``<id>_mask.gif``), else none.

Groups (``--group-regex``): the folds never split a group. By default Carvana's ids ``<car>_<NN>`` group by car when
every id has that form, and each image is its own group otherwise. Views (the ``NN``, Carvana's fixed studio angles)
exist only when every id has that form; the per-view statistics and baselines need them.
"""
from __future__ import annotations

import os
import re
import typing
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.errors import PipelineError, listing

# --- the extension table: every accepted file name ending, compared in lower case ---
# Images (train/, test/): the formats segmentation sets come in, each read by OpenCV (pixels) and PIL (header sizes);
# .jpg first: Carvana's, named first in messages.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
# Masks (train_masks/, test_masks/, instance folders): lossless formats only (a JPEG's artefacts would blur the
# labels); .gif is Carvana's.
MASK_EXTS = (".png", ".gif", ".tif", ".tiff", ".bmp")
# What files.image_id strips from a file name or a submission row's img: any image's or mask's extension.
NAME_EXTS = tuple(dict.fromkeys(IMAGE_EXTS + MASK_EXTS))
# Photos (03_predict.py --images): the images' and WebP, which phones and web pages save: photos come from anywhere,
# a dataset's images from a dataset.
PHOTO_EXTS = IMAGE_EXTS + (".webp",)
AUTO_SUFFIXES = ("_mask", "")  # --mask-suffix empty: tried in this order
CARVANA_ID = re.compile(r"(?P<car>.+)_(?P<view>\d{2})")  # 00087a6bd4dc_01: car 00087a6bd4dc, view 1
IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}


def split_name(name: str, exts: Sequence[str]) -> str | None:
    """'a.b c_é.JPG' -> 'a.b c_é' when the name's last extension (any case) is one of ``exts``, else None."""
    stem, ext = os.path.splitext(name)
    return stem if stem and ext.lower() in exts else None


def files_in(folder: Path, exts: Sequence[str]) -> list[Path]:
    """The files of ``folder`` whose extension (any case) is one of ``exts``, sorted; hidden ones (a dot first: our
    temporary files, macOS's ``._photo.jpg`` metadata) are never data."""
    return sorted(Path(e.path) for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")
                  and split_name(e.name, exts) is not None)


def _entries(folder: Path) -> list[os.DirEntry]:
    if not folder.is_dir():
        raise PipelineError(f"{folder}: folder missing (expected the Kaggle layout: see README)")
    return sorted((e for e in os.scandir(folder) if e.name.lower() not in IGNORED and not e.name.startswith(".")),
                  key=lambda e: e.name)


def list_images(folder: Path, notes: list[str]) -> dict[str, Path]:
    """Image id -> path for the image files in ``folder``; other entries are skipped with a note.

    Two files giving the same id (``photo.jpg`` and ``photo.png``, ``a.JPG`` and ``a.jpg``) are an error naming both.
    """
    found: dict[str, Path] = {}
    duplicates, skipped = [], []
    for entry in _entries(folder):
        image_id = split_name(entry.name, IMAGE_EXTS) if entry.is_file() else None
        if image_id is None:
            skipped.append(entry.name)
        elif image_id in found:
            duplicates.append(f"{found[image_id].name} and {entry.name} give the same id {image_id!r}")
        else:
            found[image_id] = Path(entry.path)
    if duplicates:
        raise PipelineError(f"{folder}: duplicate image ids: {listing(duplicates)}; keep one file per image "
                            "(rename or remove the others)")
    if skipped:
        notes.append(f"{folder}: skipped {len(skipped)} entries that are not images "
                     f"({', '.join(IMAGE_EXTS)}): {listing(skipped)}")
    if not found:
        others = sorted({Path(n).suffix.lower() for n in skipped if Path(n).suffix})
        held = f"; it holds {len(skipped)} other entries ({', '.join(others) or 'no extension'})" if skipped else \
            " (empty folder?)"
        raise PipelineError(f"{folder}: no *.jpg files{held}; images may also be {', '.join(IMAGE_EXTS[1:])}")
    return found


def mask_candidates(suffix: str) -> tuple[str, ...]:
    """The suffixes a mask name may carry after the id: ``(suffix,)``, or the auto ones when it is empty."""
    return (suffix,) if suffix else AUTO_SUFFIXES


def match_masks(ids: Iterable[str], folder: Path, suffix: str, notes: list[str]
                ) -> tuple[dict[str, Path], list[str], list[Path]]:
    """Find each id's mask in ``folder``: a file ``<id><suffix>.<ext>`` or an instance folder ``<id><suffix>/``.

    Returns (id -> mask file or folder for the ids that have one, ambiguous, strays): lines naming the files of each
    id with two candidate masks, and the masks that no id claims. Ids without a mask are left to the caller.
    """
    by_stem: dict[str, list[Path]] = {}
    skipped = []
    for entry in _entries(folder):
        stem = entry.name if entry.is_dir() else split_name(entry.name, MASK_EXTS)
        if stem is None:
            skipped.append(entry.name)
        else:
            by_stem.setdefault(stem, []).append(Path(entry.path))
    found, ambiguous, claimed = {}, [], set()
    for image_id in ids:
        candidates = [p for s in mask_candidates(suffix) for p in by_stem.get(image_id + s, [])]
        claimed.update(image_id + s for s in mask_candidates(suffix) if image_id + s in by_stem)
        if len(candidates) > 1:
            ambiguous.append(f"{candidates[0]}: image {image_id!r} has {len(candidates)} masks: "
                            f"{' and '.join(p.name for p in candidates)}; keep one, or give --mask-suffix")
        elif candidates:
            found[image_id] = candidates[0]
    strays = [path for stem in sorted(set(by_stem) - claimed) for path in by_stem[stem]]
    if skipped:
        notes.append(f"{folder}: skipped {len(skipped)} entries that are not masks ({', '.join(MASK_EXTS)} or "
                     f"instance folders): {listing(skipped)}")
    return found, ambiguous, strays


def stray_line(path: Path, suffix: str, image_folder: Path) -> str:
    """The problem line of a mask that no image claims."""
    stem = path.name if path.is_dir() else split_name(path.name, MASK_EXTS)
    return (f"{path}: mask has no image in {image_folder} (expected an image named {_unsuffixed(stem, suffix)}.<ext>; "
            "with another naming give --mask-suffix)")


def _unsuffixed(stem: str, suffix: str) -> str:
    for s in mask_candidates(suffix):
        if s and stem.endswith(s):
            return stem[: -len(s)]
    return stem


def mask_hint(image_id: str, suffix: str) -> str:
    """How the mask of ``image_id`` may be named, for messages."""
    names = [f"{image_id}{s}.png" for s in mask_candidates(suffix)]
    return f"{' or '.join(names)} (or .gif/.tif/.bmp, or an instance folder {image_id}{mask_candidates(suffix)[0]}/)"


def instance_files(folder: Path) -> list[Path]:
    """The instance masks of an instance folder, sorted; PipelineError if it holds none."""
    paths = files_in(folder, MASK_EXTS)
    if not paths:
        raise PipelineError(f"{folder}: instance folder holds no mask files ({', '.join(MASK_EXTS)}); an image with "
                            f"no object needs one all-0 mask, e.g. {folder / 'empty.png'}")
    return paths


# --- groups and views ---
@dataclass(frozen=True)
class Groups:
    """The group of each id (the folds keep a group together) and its view (0: the data has no views)."""
    rule: str  # which rule made the groups, for 01_prepare.py's output
    groups: list[str]
    views: list[int]

    @property
    def has_views(self) -> bool:
        return bool(self.views) and min(self.views) > 0


def carvana_views(ids: Sequence[str]) -> list[int] | None:
    """Each id's view when every id is Carvana's ``<car>_<NN>``, else None."""
    matches = [CARVANA_ID.fullmatch(i) for i in ids]
    if not ids or not all(matches):
        return None
    return [int(m.group("view")) for m in matches]


def groups_of(ids: Sequence[str], regex: str = "") -> Groups:
    """Groups of ``ids`` by ``--group-regex`` (its first capture group), else the default rule (module docstring).

    An id that ``regex`` does not match (or whose first group is empty) is a PipelineError naming it."""
    views = carvana_views(ids)
    if regex:
        pattern = re.compile(regex)
        groups = []
        for image_id in ids:
            m = pattern.search(image_id)
            if m is None or not m.group(1):
                raise PipelineError(f"--group-regex {regex!r}: image id {image_id!r} does not match it (or its first "
                                    "capture group is empty); fix the regex so that every id gives its group, or "
                                    "leave it out for the default grouping")
            groups.append(m.group(1))
        rule = f"--group-regex {regex!r} (first capture group)"
    elif views is not None:
        groups = [CARVANA_ID.fullmatch(i).group("car") for i in ids]
        rule = "Carvana's <car>_<NN> (every id has that form): one group per car"
    elif any(CARVANA_ID.fullmatch(i) for i in ids):
        _refuse_mixed_forms(ids)
    else:
        groups = list(ids)
        rule = "one group per image (not every id is Carvana's <car>_<NN>; --group-regex sets groups)"
    return Groups(rule, groups, views if views is not None else [0] * len(ids))


# Regexes offered when only some ids have Carvana's form, tried in order: the first that gives every id a group and
# each <car>_<NN> id its car is named in the error ("705a5661a791_01_retake" -> "705a5661a791").
_GROUP_SUGGESTIONS = (r"^(.+?)_\d{2}(?:_|$)", r"^([^_]+)_")


def _refuse_mixed_forms(ids: Sequence[str]) -> typing.NoReturn:
    """Some ids are <car>_<NN> and some are not: one group per image would put a car's views in several folds
    (validation images seen in training), and grouping only the others would too. Refuse, naming the odd ids and a
    --group-regex that groups every id (checked against the Carvana ids' cars)."""
    from params import command
    odd = [i for i in ids if not CARVANA_ID.fullmatch(i)]
    suggestion = next((rx for rx in _GROUP_SUGGESTIONS if all(
        (m := re.search(rx, i)) and m.group(1) and (not (c := CARVANA_ID.fullmatch(i)) or c.group("car") == m.group(1))
        for i in ids)), None)
    fix = (f"give the rule that groups every id, e.g. {command('01_prepare.py', '--group-regex', suggestion)}"
           if suggestion else "give --group-regex with a capture group that every id matches")
    raise PipelineError(f"{len(odd)} of {len(ids)} training ids are not <car>_<NN> as the others are "
                        f"({listing(odd)}), so the folds cannot keep each car together; {fix}, or --group-regex "
                        "'(.*)' for one group per image; nothing was written")


def group_summary(groups: Sequence[str]) -> str:
    """'32 groups of 16 images (min 16, median 16, max 16)'."""
    sizes = np.array(list(Counter(groups).values()) or [0])
    return (f"{len(sizes)} groups, images per group min {sizes.min()}, median {np.median(sizes):g}, "
            f"max {sizes.max()}")
