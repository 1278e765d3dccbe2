"""Kaggle's CSV files of per-class run-length codes: the training truth in ``train.csv`` and the row form of
``sample_submission.csv``, as the Severstal steel-defect and Understanding Clouds competitions give them.

The forms, told apart by the header (``form_of``):
    ImageId,ClassId,EncodedPixels    Severstal (the three columns in any order): a row per image and class
    ImageId_ClassId,EncodedPixels    Severstal's first form: rows ``<file>_<ClassId>``
    Image_Label,EncodedPixels        Clouds: rows ``<file>_<label name>``, the label one of --class-names
    img,rle_mask                     the project's own (Carvana's), for submissions only
A ClassId k is label k-1 of a multi-label task (``--multilabel``: labels 0..C-1, ClassIds 1..C) and class k of a
multi-class one (class 0 the background, ClassIds 1..C-1). An empty EncodedPixels is a class the image does not hold.
Both competitions count pixels top to bottom, then left to right: the stages refuse these forms unless
``--rle-order column`` (``check_order``), and the codes are read and written by lib/rle.py in that order.

Training truth (``train_truth``): when ``train_masks/`` is absent, ``train.csv`` in one of the three Kaggle forms holds
it. Each training image gets a ``CsvTruth``, its rows, which ``Task.read_truth`` decodes at the image's size; an image
with no row (Severstal lists only the classes present) holds no class. Every problem names the file and the line.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lib import files, rle
from lib.errors import PipelineError
from lib.fingerprint import Fingerprint, of_bytes

ORDER = "column"  # both competitions' pixel order (lib/rle.py's name for it)
IMAGE_ID, CLASS_ID, PIXELS = "ImageId", "ClassId", "EncodedPixels"


@dataclass(frozen=True)
class Form:
    """How a CSV of per-class RLE rows is laid out: its header, and whether a row names its class by a ClassId."""
    header: tuple[str, ...]
    class_id: bool  # the class part of a row id is a ClassId (1, 2, ...), not a class name

    @property
    def kaggle(self) -> bool:
        """One of the competitions' forms (column-major RLEs), not the project's own ``img,rle_mask``."""
        return self.header != PLAIN.header

    @property
    def text(self) -> str:
        return ",".join(self.header)

    def fields(self, key: str, code: str) -> tuple[str, ...]:
        """The CSV fields of a row whose id is ``key`` (``<file>_<class>``, as ``key_code`` joins the three-column
        form's ImageId and ClassId) and whose RLE is ``code``, in the header's order."""
        if len(self.header) == 2:
            return key, code
        image, _, class_id = key.rpartition("_")
        values = {IMAGE_ID: image, CLASS_ID: class_id, PIXELS: code}
        return tuple(values[name] for name in self.header)

    def key_code(self, row: Sequence[str]) -> tuple[str, str]:
        """(row id, RLE) of a row's fields; the three-column form's id is ``<ImageId>_<ClassId>``."""
        if len(self.header) == 2:
            return row[0], row[1]
        values = dict(zip(self.header, row))
        return f"{values[IMAGE_ID]}_{values[CLASS_ID]}", values[PIXELS]


PLAIN = Form(("img", "rle_mask"), False)
JOINED = Form(("ImageId_ClassId", PIXELS), True)
CLOUDS = Form(("Image_Label", PIXELS), False)
LONG = Form((IMAGE_ID, CLASS_ID, PIXELS), True)
KAGGLE_FORMS = f"{LONG.text} (any column order), {JOINED.text} or {CLOUDS.text}"


def form_of(header: Sequence[str]) -> Form | None:
    """The form a CSV header gives, or None when it is none of them."""
    header = tuple(h.strip() for h in header)
    for form in (PLAIN, JOINED, CLOUDS):
        if header == form.header:
            return form
    return Form(header, True) if sorted(header) == sorted(LONG.header) else None


def row_form(form: Form, task) -> str:
    """What a row id of ``form`` is, for messages."""
    if form == PLAIN:
        return "<file name>_<label name>" if task.multilabel else "<image id>_<class name>"
    if form == LONG:
        return "an ImageId and a ClassId"
    return "<file name>_<ClassId>" if form.class_id else "<file name>_<label name>"


def split(key: str, form: Form, task) -> tuple[str, str]:
    """(image part, class part) of a row id: ``<image>_<ClassId>``, or ``<image>_<class name>`` where the longest of
    the task's scored class names that ends the id wins (names may hold '_'); else split at the last '_'."""
    if not form.class_id:
        for name in sorted((task.names[c] for c in task.scored), key=len, reverse=True):
            if key.endswith("_" + name) and len(key) > len(name) + 1:
                return key[: -len(name) - 1], name
    image, _, part = key.rpartition("_")
    return image, part


def class_index(part: str, form: Form, task) -> int | None:
    """The class a row's class part names, one of ``task.scored``, or None: a ClassId k is label k-1 (multi-label)
    or class k (multi-class); a name is the class of that name."""
    if form.class_id:
        if not (part.isascii() and part.isdigit()):
            return None
        k = int(part) - (1 if task.multilabel else 0)
        return k if k in task.scored else None
    scored = {task.names[c]: c for c in task.scored}
    return scored.get(part)


# --- reading a CSV ---
@dataclass(frozen=True)
class Table:
    """The rows of a per-class RLE CSV as read: (line number, row id, RLE) each, and the file's fingerprint."""
    path: Path
    form: Form
    rows: list[tuple[int, str, str]]
    fingerprint: Fingerprint


def read_header(path: Path) -> list[str]:
    """The first row of a CSV file; PipelineError naming it when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PipelineError(f"{path}: not a readable CSV ({e})") from None


def read_table(path: Path, kaggle_only: bool = False) -> Table:
    """Every row of a per-class RLE CSV in one of the forms (``kaggle_only``: not the project's own); PipelineError
    naming the file for another header, and the line of a row with another number of fields."""
    try:
        before = os.stat(path)
        raw = files.read_bytes(path)
        reader = csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""))
        header = next(reader, [])
        body = [(reader.line_num, row) for row in reader if row]
    except (UnicodeDecodeError, csv.Error) as e:
        raise PipelineError(f"{path}: not a readable CSV ({e})") from None
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None
    form = form_of(header)
    if form is None or (kaggle_only and not form.kaggle):
        expected = KAGGLE_FORMS if kaggle_only else f"{PLAIN.text}, {KAGGLE_FORMS}"
        raise PipelineError(f"{path}: columns are {header}, expected {expected}")
    rows = []
    for line, row in body:
        if len(row) != len(form.header):
            raise PipelineError(f"{path} line {line}: {len(row)} fields, the header has {len(form.header)} "
                                f"({form.text}); fix the row")
        key, code = form.key_code([v.strip() for v in row])
        rows.append((line, key, code))
    return Table(Path(path), form, rows, of_bytes(raw, before))


def check_order(path: Path, order: str) -> None:
    """PipelineError when ``path`` (train.csv or sample_submission.csv, if it exists) has a Kaggle form and ``order``
    (--rle-order) is not theirs: its codes would be read, or a submission's written, in the wrong pixel order."""
    if order == ORDER or not Path(path).is_file():
        return
    form = form_of(read_header(path))
    if form is not None and form.kaggle:
        from params import rerun
        raise PipelineError(f"{path}: {form.text} rows count pixels top to bottom, then left to right, and "
                            f"--rle-order is {order}; give --rle-order {ORDER} to every stage: "
                            f"{rerun('--rle-order', ORDER)}")


# --- training truth ---
@dataclass(frozen=True)
class CsvTruth:
    """One training image's truth as rows of ``train.csv``: what its mask file or instance folder is otherwise.

    Path-like: the file it comes from is the CSV, which caches name and fingerprint (``fingerprint``: the CSV's as its
    rows were read, so that no stage hashes the whole file once per image)."""
    csv: Path
    image: Path
    fingerprint: Fingerprint
    rows: tuple[tuple[int, int, str], ...] = ()  # (line, class index, RLE) of each row with pixels, in file order

    def __fspath__(self) -> str:
        return os.fspath(self.csv)

    def __str__(self) -> str:
        return f"{self.csv} (rows of {self.image.name})"

    def masks(self) -> tuple[tuple[int, int], list[tuple[int, int, NDArray[np.bool_]]]]:
        """((H, W) of the image, (line, class index, (H, W) bool mask) of each row): each RLE decoded at the image's
        size from its header; PipelineError naming the line of a malformed one or one running past the image."""
        from lib.inputs import image_header_size
        size = image_header_size(self.image)
        if size is None:
            raise PipelineError(f"{self.image}: not a readable image")
        out = []
        for line, c, code in self.rows:
            try:
                out.append((line, c, rle.decode(code, size, ORDER)))
            except ValueError as e:
                raise PipelineError(f"{self.csv} line {line}: the EncodedPixels of {self.image.name} are no RLE of "
                                    f"its {size[1]}x{size[0]} image ({e}); fix the row") from None
        return size, out


def truth_csv(root: Path) -> Path | None:
    """``root/train.csv`` when it holds the training truth: there is no ``train_masks/`` folder beside it."""
    root = Path(root)
    path = root / files.TRAIN_CSV
    return path if not (root / files.TRAIN_MASKS).exists() and path.is_file() else None


def train_truth(path: Path, images: dict[str, Path], task, notes: list[str]
                ) -> tuple[dict[str, CsvTruth], list[str]]:
    """id -> ``CsvTruth`` for each training image (``images``: id -> file) from the Kaggle CSV ``path``, and the
    problems, one line each naming the file and line: a row whose image is not among ``images``, a class that is not
    one of the task's, two rows for one image and class, a row id that is not of the form. PipelineError for a binary
    task (the rows are per class: the line says which --classes to give)."""
    table = read_table(path, kaggle_only=True)
    if task.binary:
        raise _binary_refusal(table)
    listed: dict[str, list[tuple[int, int, str]]] = {}  # image name in the CSV -> its rows
    problems, bad, seen, parts = [], {}, {}, []
    for line, key, code in table.rows:
        image, part = split(key, table.form, task)
        parts.append(part)
        if not image or not part:
            problems.append(f"{path} line {line}: {key!r} is not {row_form(table.form, task)}; fix the row")
            continue
        c = class_index(part, table.form, task)
        if c is None:
            bad.setdefault(part, []).append(line)
            continue
        if (image, c) in seen:
            problems.append(f"{path} lines {seen[image, c]} and {line}: two rows for {image} and class "
                            f"{task.names[c]}; keep one")
            continue
        seen[image, c] = line
        listed.setdefault(image, []).append((line, c, code))
    problems += [_bad_class(table, task, part, lines, parts) for part, lines in bad.items()]
    by_name = {p.name: i for i, p in images.items()}
    rows_of: dict[str, list[tuple[int, int, str]]] = {}
    for name, rows in listed.items():
        image_id = by_name.get(name) or next((i for i in (name, files.image_id(name)) if i in images), None)
        if image_id is None:
            folder = next(iter(images.values())).parent if images else files.TRAIN
            problems.append(f"{path} line {rows[0][0]}: image {name!r} is not in {folder}; add the image or remove "
                            "its rows")
            continue
        rows_of.setdefault(image_id, []).extend(rows)
    truth = {i: CsvTruth(Path(path), images[i], table.fingerprint,
                         tuple(sorted(r for r in rows_of.get(i, []) if r[2]))) for i in images}
    unlisted = len(images) - len(set(rows_of) & set(images))
    notes.append(f"training truth from {path} ({table.form.text}, {len(table.rows)} rows, RLEs {ORDER}-major)"
                 + (f"; {unlisted} of the {len(images)} training images have no row: no class" if unlisted else ""))
    return truth, problems


def _bad_class(table: Table, task, part: str, lines: list[int], parts: list[str]) -> str:
    """The problem line of the rows (``lines``) whose class part ``part`` names no class of the task; ``parts``: the
    class parts of every row, for the --classes or --class-names that would take them."""
    from params import rerun
    where = f"{table.path} line {lines[0]}" + (f" (and {len(lines) - 1} more rows)" if len(lines) > 1 else "")
    flags = f"--classes {task.classes}" + (" --multilabel" if task.multilabel else "")
    if table.form.class_id:
        high = max((int(p) for p in parts if p.isascii() and p.isdigit()), default=0)
        span = f"1..{len(task.scored)}"
        if part.isascii() and part.isdigit() and int(part) > len(task.scored):
            need = high + (0 if task.multilabel else 1)
            fix = (f"fix the row, or give --classes {need} (and as many class names) to every stage: "
                   f"{rerun('--classes', str(need))}")
        else:
            fix = "fix or remove the row"
        return f"{where}: ClassId {part!r} is not one of {span} ({flags}); {fix}"
    names = list(dict.fromkeys(parts))
    names = names if task.multilabel else [task.names[0], *names]
    return (f"{where}: label {part!r} is not one of the class names {', '.join(task.names[c] for c in task.scored)} "
            f"({flags}); fix the row, or give the labels the file uses to every stage: "
            f"{rerun('--classes', str(len(names)), '--class-names', ','.join(names))}")


def _binary_refusal(table: Table) -> PipelineError:
    """The error for per-class rows read as binary masks: the --classes (and names) that would take them."""
    from params import rerun
    parts = [key.rpartition("_")[2] for _, key, _ in table.rows]
    if table.form.class_id:
        n = max((int(p) for p in parts if p.isascii() and p.isdigit()), default=1)
        fix = rerun("--classes", str(n), "--multilabel")
    else:
        names = list(dict.fromkeys(parts)) or ["1"]
        fix = rerun("--classes", str(len(names)), "--multilabel", "--class-names", ",".join(names))
    return PipelineError(f"{table.path}: per-class RLE rows ({table.form.text}) hold the training truth (no "
                         f"{files.TRAIN_MASKS}/ folder), but the task is binary masks; give the classes to every "
                         f"stage: {fix}")
