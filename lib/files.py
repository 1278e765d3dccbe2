"""The files stages hand each other, named in one place, and atomic writing.

Every file a later stage trusts is written to a temporary name in the same folder and then
renamed, so an interrupted run never leaves a half-written file under the final name.

    input/   train/ train_masks/ test/ [test_masks/] [sample_submission.csv train_masks.csv metadata.csv]
             (how images and masks may be named: lib/layout.py)
    output/  folds.csv  cache/<H>x<W>/  <experiment>/params.json
             <experiment>/fold<k>/{model.pt,last.pt,log.csv,curve.png,oof.npz,params.json}
             <experiment>/tuning.json  <experiment>/test_probs/{<id>.png,meta.json}
             <experiment>/<submission>.csv.gz (+ .manifest.json)  <experiment>/comparison.md
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

# --- input (the Kaggle layout) ---
TRAIN, TRAIN_MASKS, TEST, TEST_MASKS = "train", "train_masks", "test", "test_masks"
SAMPLE_SUBMISSION, TRAIN_MASKS_CSV, METADATA_CSV = "sample_submission.csv", "train_masks.csv", "metadata.csv"


def mask_name(image_id: str) -> str:
    """'00087a6bd4dc_01' -> '00087a6bd4dc_01_mask.gif'."""
    return f"{image_id}_mask.gif"


IMAGE_NAME_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif")  # what image_id strips (any case)


def image_id(name: str) -> str:
    """The id a file name (or a submission row's ``img``) gives: the name without its image extension.

    '00087a6bd4dc_01.jpg' -> '00087a6bd4dc_01'; 'a.b c_é.PNG' -> 'a.b c_é' (ids may hold dots); 'x' -> 'x'."""
    base = Path(name).name
    stem, ext = os.path.splitext(base)
    return stem if stem and ext.lower() in IMAGE_NAME_EXTS else base


def car_of(image_id_: str) -> str:
    """'00087a6bd4dc_01' -> '00087a6bd4dc'."""
    return image_id_.rsplit("_", 1)[0]


def view_of(image_id_: str) -> int:
    """'00087a6bd4dc_01' -> 1."""
    return int(image_id_.rsplit("_", 1)[1])


# --- output ---
def folds_csv(output: Path) -> Path:
    return output / "folds.csv"


def cache_dir(output: Path, height: int, width: int) -> Path:
    return output / "cache" / f"{height}x{width}"


def run_dir(output: Path, experiment: str) -> Path:
    return output / experiment


FULL = "full"  # 02_train.py --fold full: the model fitted on every training image (no validation images)


def fold_dir(output: Path, experiment: str, fold: int | str) -> Path:
    """output/<experiment>/fold<K>/, or output/<experiment>/full/ for the model fitted on every image."""
    return run_dir(output, experiment) / (FULL if fold == FULL else f"fold{fold}")


BEST, LAST, LOG, CURVE, OOF, PARAMS = "model.pt", "last.pt", "log.csv", "curve.png", "oof.npz", "params.json"
TUNING, TEST_PROBS, COMPARISON = "tuning.json", "test_probs", "comparison.md"
LOCK = ".lock"  # in a fold folder while a process trains it (files.exclusive)
PROBS_META = "meta.json"  # in test_probs/: the models, TTA and size that made its maps (probs_made_by)
PREPARE_PARAMS, PREDICT_PARAMS, SUBMIT_PARAMS = "prepare_params.json", "predict_params.json", "submit_params.json"


def probs_made_by(tuning: dict) -> dict:
    """What test_probs/meta.json records of a tuning.json: the maps of one folder share it."""
    return {k: tuning.get(k) for k in ("models", "tta", "size", "task")}


# --- atomic writing ---
TMP_MARK = ".tmp"  # temporary names: .<final name>.tmp<pid>, never the final name or its suffix
_TMP_NAME = re.compile(r"\..+\.tmp(\d+)")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or Path(e.filename) == tmp:  # e.g. a failed write(): name the file being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(folder: Path, name: str | None = None) -> int:
    """Delete the temporary files that killed writers left in ``folder`` (only those of file ``name`` if
    given); return how many. Only names made by ``atomic_path`` whose process is gone are removed."""
    removed = 0
    if not Path(folder).is_dir():
        return removed
    for entry in os.scandir(folder):
        m = _TMP_NAME.fullmatch(entry.name)
        if m and (name is None or entry.name.startswith(f".{name}{TMP_MARK}")) and not _alive(int(m.group(1))):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def exclusive(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an advisory lock on the file ``path`` (created if missing) for the block: one writer at a time.

    The operating system drops the lock when its process ends, so a lock left by a killed process never blocks.
    With ``wait`` the block waits for the holder to finish; without, another holder is refused at once, naming it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, path, what, wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_unlocked(path: Path, what: str) -> None:
    """PipelineError if another process holds ``exclusive(path)``; creates nothing (a refused run writes nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        _lock(fd, Path(path), what, wait=False)
    finally:
        os.close(fd)


def _lock(fd: int, path: Path, what: str, wait: bool) -> None:
    import fcntl
    from lib.errors import PipelineError
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise PipelineError(f"{path.parent}: {what} is in use by another process (pid {holder}); wait for it "
                            "to finish, or use another --experiment or --output (nothing was changed)") from None


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


class OrderedWriter:
    """Runs writes on one background thread, in the order given, while the caller goes on computing.

    After a write fails, the later ones are skipped (so no file claims a state an earlier file lacks)
    and the error is raised by the next ``submit``, ``flush`` or ``close``. ``flush`` waits for every
    write given so far; use it as a context manager to close it.
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="writer")
        self._futures: list = []
        self._error: BaseException | None = None

    def submit(self, fn, *args, **kwargs) -> None:
        self._raise()
        self._futures.append(self._pool.submit(self._run, fn, args, kwargs))

    def _run(self, fn, args, kwargs) -> None:
        if self._error is None:
            try:
                fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread by _raise
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush(self) -> None:
        for f in self._futures:
            f.result()
        self._futures.clear()
        self._raise()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "OrderedWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:  # already failing: finish what was given (good states), without masking that error
            try:
                self.close()
            except BaseException:  # noqa: BLE001
                pass


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json(path: Path, obj: dict) -> None:
    import json
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


# --- what a file another stage wrote must hold: a small typed schema, checked before anything is used ---
class ListOf:
    """Schema kind: a list whose items are all of ``kind``."""

    def __init__(self, kind):
        self.kind = kind


class MapOf:
    """Schema kind: an object (dict) with string keys whose values are all of ``kind``."""

    def __init__(self, kind):
        self.kind = kind


_KIND_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "an object", type(None): "null"}


def _kind_name(kind) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_kind_name(k) for k in kind)
    if isinstance(kind, (dict, MapOf)):
        return "an object"
    if isinstance(kind, ListOf):
        return "a list"
    return _KIND_NAMES.get(kind, f"a {getattr(kind, '__name__', kind)}")


def _is(value, kind: type) -> bool:
    if isinstance(value, bool):  # JSON true is not a number, nor 1 a flag
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def schema_problem(value, kind, name: str = "") -> str | None:
    """What is wrong with ``value`` as a ``kind``, or None. ``kind``: a type (float also takes an int; bool is
    neither), a tuple of kinds (any of them), a dict ``{key: kind}`` (an object with those keys; a key ending
    in '?' may be absent, others may be added), ``ListOf(kind)`` or ``MapOf(kind)``."""
    where = name or "its content"
    if isinstance(kind, tuple):
        if any(schema_problem(value, k, name) is None for k in kind):
            return None
        return f"{where} is {_kind_name(type(value))}, expected {_kind_name(kind)}"
    if isinstance(kind, (dict, MapOf)):
        if not isinstance(value, dict):
            return f"{where} is {_kind_name(type(value))}, expected an object"
        items = kind.items() if isinstance(kind, dict) else ((k, kind.kind) for k in value)
        for key, sub in items:
            key, optional = (key[:-1], True) if isinstance(kind, dict) and key.endswith("?") else (key, False)
            child = f"{name}.{key}" if name else str(key)
            if key not in value:
                if optional:
                    continue
                return f"{child} is missing"
            found = schema_problem(value[key], sub, child)
            if found:
                return found
        return None
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            return f"{where} is {_kind_name(type(value))}, expected a list"
        for i, item in enumerate(value):
            found = schema_problem(item, kind.kind, f"{name or 'item'}[{i}]")
            if found:
                return found
        return None
    return None if _is(value, kind) else f"{where} is {_kind_name(type(value))}, expected {_kind_name(kind)}"


def check_schema(path: Path, record, schema, made_by: str, repair: str) -> None:
    """PipelineError ``<path>: damaged or not written by <made_by>: <what is wrong>; <repair>`` unless ``record``
    fits ``schema`` (``schema_problem``)."""
    from lib.errors import PipelineError
    problem = schema_problem(record, schema)
    if problem:
        raise PipelineError(f"{path}: damaged or not written by {made_by}: {problem}; {repair}")


def read_json(path: Path, made_by: str, schema=dict, repair: str | None = None) -> dict:
    """A JSON file another stage wrote, checked against ``schema`` (``schema_problem``; default: any object);
    a one-line PipelineError naming the file, what is wrong and ``repair`` (default: re-run ``made_by``) if it
    is missing, empty, not JSON or not of that shape."""
    import json
    from lib.errors import PipelineError
    repair = repair or f"re-run {made_by}"
    if not path.exists():
        raise PipelineError(f"{path}: missing; run {made_by} first")
    data = path.read_bytes()
    if not data.strip():
        raise PipelineError(f"{path}: empty ({len(data)} bytes); {repair}")
    try:
        record = json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise PipelineError(f"{path}: not valid JSON ({e}); {repair}") from None
    check_schema(path, record, schema, made_by, repair)
    return record


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIG_KEY = b"orig"  # tEXt keyword of a map's source image size, "<H>x<W>"


def write_prob_png(path: Path, prob_u8, orig_size: tuple[int, int]) -> None:
    """(H, W) uint8 probability map of an image of ``orig_size`` (H0, W0) -> lossless 8-bit PNG, atomically.

    The map records the size of the image it was made from (a tEXt chunk right after the header), so a map
    is always brought back to its own image's size, and a map whose image changed size is recognised.
    No PNG row filter: on these maps (long runs of 0 and 255) it compresses as well as libpng's adaptive
    filtering and decodes much faster, which is what 04_submit.py spends its time on
    (benchmarks/results/submit.md).
    """
    import cv2
    import zlib
    ok, png = cv2.imencode(".png", prob_u8, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                             cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE])
    if not ok:
        raise OSError(f"could not encode {path}")
    data = _ORIG_KEY + b"\0" + f"{int(orig_size[0])}x{int(orig_size[1])}".encode()
    chunk = len(data).to_bytes(4, "big") + b"tEXt" + data + zlib.crc32(b"tEXt" + data).to_bytes(4, "big")
    raw = png.tobytes()
    write_bytes_atomic(path, raw[:33] + chunk + raw[33:])  # 33 = signature (8) + IHDR chunk (25)


def prob_png_info(path: Path) -> tuple[tuple[int, int], tuple[int, int] | None] | None:
    """((h, w) of the map, (H0, W0) of its image or None if unrecorded) from the file's first bytes, or None
    for a file that is not such a map (missing, empty, truncated header, not 8-bit grey)."""
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return None
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR" or head[24:26] != b"\x08\x00":
        return None  # 8-bit depth, colour type 0 (grey) is what write_prob_png writes
    size = int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    length = int.from_bytes(head[33:37], "big")
    orig = None
    if head[37:41] == b"tEXt" and 41 + length <= len(head):
        key, _, value = head[41:41 + length].partition(b"\0")
        h, _, w = value.decode(errors="replace").partition("x")
        if key == _ORIG_KEY and h.isdigit() and w.isdigit():
            orig = (int(h), int(w))
    return size, orig


def read_prob_png(path: Path):
    """(H, W) uint8 map written by write_prob_png; PipelineError if missing or unreadable."""
    import cv2
    import numpy as np
    from lib.errors import PipelineError
    data = np.fromfile(path, np.uint8) if path.exists() else None
    prob = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if prob is None or prob.ndim != 2 or prob.dtype != np.uint8:
        raise PipelineError(f"{path}: missing or not an 8-bit probability map; re-run 03_predict.py (it predicts "
                            "missing and damaged maps again)")
    return prob
