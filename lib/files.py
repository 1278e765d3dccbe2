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
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from lib.errors import PipelineError, listing
from lib.layout import NAME_EXTS

# --- input (the Kaggle layout) ---
TRAIN, TRAIN_MASKS, TEST, TEST_MASKS = "train", "train_masks", "test", "test_masks"
SAMPLE_SUBMISSION, TRAIN_MASKS_CSV, METADATA_CSV = "sample_submission.csv", "train_masks.csv", "metadata.csv"
TRAIN_CSV = "train.csv"  # Kaggle's per-class RLE rows (Severstal, Clouds): the truth when there is no train_masks/


def mask_name(image_id: str) -> str:
    """'00087a6bd4dc_01' -> '00087a6bd4dc_01_mask.gif'."""
    return f"{image_id}_mask.gif"


def image_id(name: str) -> str:
    """The id a file name (or a submission row's ``img``) gives: the name without its image extension.

    '00087a6bd4dc_01.jpg' -> '00087a6bd4dc_01'; 'a.b c_é.PNG' -> 'a.b c_é' (ids may hold dots); 'x' -> 'x'."""
    base = Path(name).name
    stem, ext = os.path.splitext(base)
    return stem if stem and ext.lower() in NAME_EXTS else base


# --- output ---
def folds_csv(output: Path) -> Path:
    return output / "folds.csv"


def cache_dir(output: Path, height: int, width: int) -> Path:
    return output / "cache" / f"{height}x{width}"


def tile_cache_dir(output: Path, downscale: float) -> Path:
    """The tile cache of --downscale ``downscale`` (lib/tilecache.py): output/cache/tiles_2, tiles_1.5, ..."""
    return output / "cache" / f"tiles_{downscale:g}"


def run_dir(output: Path, experiment: str) -> Path:
    return output / experiment


FULL = "full"  # 02_train.py --fold full: the model fitted on every training image (no validation images)


def fold_dir(output: Path, experiment: str, fold: int | str) -> Path:
    """output/<experiment>/fold<K>/, or output/<experiment>/full/ for the model fitted on every image."""
    return run_dir(output, experiment) / (FULL if fold == FULL else f"fold{fold}")


BEST, LAST, LOG, CURVE, OOF, PARAMS = "model.pt", "last.pt", "log.csv", "curve.png", "oof.npz", "params.json"
TUNING, TEST_PROBS, COMPARISON = "tuning.json", "test_probs", "comparison.md"
LOCK = ".lock"  # in a fold folder while 02 trains it, in output/ while 01 runs, in output/cache/ while it is built
PREDICT_LOCK = ".predict.lock"  # experiment folder: 03 writing tuning.json or test_probs/ (--shard jobs share it)
SUBMIT_LOCK = ".submit.lock"  # experiment folder: 04 writing its submission, manifest, comparison.md, baselines
PROBS_META = "meta.json"  # in test_probs/: the models, TTA and size that made its maps (lib/testmaps.py)
PREPARE_PARAMS, PREDICT_PARAMS, SUBMIT_PARAMS = "prepare_params.json", "predict_params.json", "submit_params.json"


# --- atomic writing ---
TMP_MARK = ".tmp"  # temporary names: .<final name>.tmp<pid>, never the final name or its suffix
_TMP_NAME = re.compile(r"\..+\.tmp(\d+)")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    tmp.unlink(missing_ok=True)  # whatever is there (a link planted at this name) is never written through
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


# --- locks: one writer per folder ---
# A lock is flock(2) on a file beside what it guards; the file holds one line per holder, "<pid> <host> <since> <script>"
# (a shared lock has several), and is deleted by its last holder when it releases it. Every acquirer checks that the
# file it locked is still the one at that path, so a lock file deleted under it (released, or taken over from a holder
# that is gone) is locked afresh. The operating system drops a flock when every descriptor of it is closed: a killed
# holder's lock never blocks, and forked children (DataLoader and pool workers) close their copies at once
# (_close_in_child), so no orphaned child keeps a dead holder's lock. Should one still do so (a descriptor passed on
# otherwise), a lock whose recorded holders are all processes of this host that no longer exist is stale: it is taken
# over, with a note. Holders on another host cannot be checked from here; messages name that host.
_HOST = socket.gethostname()
_POLL_S = 0.2  # how often a waiting process tries the lock again
_SHARE_GRACE_S = 1.0  # a shared request tries this long before it is refused (another may be turning its lock shared)
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    """After fork, in the child: close its copies of the held locks' descriptors (closing a copy keeps the parent's
    lock; LOCK_UN would release it)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class Holder:
    """One holder recorded in a lock file."""

    def __init__(self, line: str):
        words = line.split(maxsplit=3) + ["", "", ""]
        self.pid = int(words[0]) if words[0].isdigit() else None
        self.host, self.since, self.script = words[1], words[2].replace("T", " ").replace("Z", " UTC"), words[3]

    @staticmethod
    def line() -> str:
        """This process's record: pid, host, the time now (UTC) and the script it runs."""
        import sys
        import time
        from params import RUN
        script = RUN.get("script") or Path(sys.argv[0]).name or "python"
        return f"{os.getpid()} {_HOST} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {script}\n"

    def mine(self) -> bool:
        """This very process (a line it left in a shared lock it held before)."""
        return self.pid == os.getpid() and self.host == _HOST

    def gone(self) -> bool:
        """Known to have ended: a process of this host that no longer exists."""
        return self.pid is not None and self.host == _HOST and not _alive(self.pid)

    def __str__(self) -> str:
        where = f" on host {self.host}" + ("" if self.host == _HOST else " (another machine)") if self.host else ""
        return (f"pid {self.pid if self.pid is not None else 'unknown'}{where}"
                + (f" since {self.since}" if self.since else "") + (f", {self.script}" if self.script else ""))


def _holders(fd: int) -> list[Holder]:
    return [Holder(ln) for ln in os.pread(fd, 1 << 16, 0).decode(errors="replace").splitlines() if ln.strip()]


def _named(holders: list[Holder]) -> str:
    """'pid 12 on host a since ..., 03_predict.py' (and how many more), the holders not known to have ended first."""
    live = [h for h in holders if not h.gone() and not h.mine()] or holders
    if not live:
        return "pid unknown"
    return listing([str(h) for h in reversed(live)], 1, more=", and {} more")


def _stale(holders: list[Holder]) -> bool:
    """Held, but every recorded holder is a process of this host that has ended (a child of it holds the lock)."""
    return bool(holders) and all(h.gone() for h in holders)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _rerun() -> str:
    from params import rerun
    return rerun()


def _open_lock(path: Path, flags: int) -> int:
    """os.open of a lock file that is never a symbolic link: a link planted there (into someone else's file) is
    refused in one line, not written through."""
    import errno
    import shlex
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        from lib.errors import PipelineError
        raise PipelineError(f"{path}: a symbolic link where a lock file belongs (the pipeline never writes through "
                            f"links; nothing was changed): delete the link (rm {shlex.quote(str(path))}), then run "
                            f"{_rerun()}") from None


def _acquire(path: Path, what: str, shared: bool, wait: float) -> int:
    """A descriptor of ``path`` holding the lock; PipelineError naming the holder if another process holds it
    (after waiting up to ``wait`` seconds, with a line saying so)."""
    import time
    from lib.errors import PipelineError
    start, told = time.monotonic(), False
    while True:
        fd = _open_lock(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        if _try_lock(fd, shared):
            if _same_file(fd, path):  # else deleted since it was opened (released, or taken over): lock the new one
                return fd
            os.close(fd)
            continue
        holders = _holders(fd)
        if _stale(holders):
            if _same_file(fd, path):  # not yet taken over by another process
                print(f"note: {path}: its holder ({_named(holders)}) has ended, but a process it started still "
                      "holds the lock; taking it over", flush=True)
                Path(path).unlink(missing_ok=True)
            os.close(fd)
            continue
        os.close(fd)
        waited = time.monotonic() - start
        if shared and waited < _SHARE_GRACE_S:  # a shared holder that found it free is turning its lock shared
            time.sleep(_SHARE_GRACE_S / 100)
            continue
        if waited >= wait:
            if wait <= 0:
                raise PipelineError(f"{path.parent}: {what} is in use by another process ({_named(holders)}); "
                                    f"wait for it to finish, then run {_rerun()} (nothing was changed)")
            raise PipelineError(f"{path}: still held by another process ({_named(holders)}) after waiting "
                                f"{wait:g} s (--lock-timeout) for {what}; once it has finished (or been stopped), "
                                f"run {_rerun()}")
        if not told:
            told = True
            print(f"waiting for {path}: {what} is held by another process ({_named(holders)}); giving up after "
                  f"{wait:g} s (--lock-timeout)", flush=True)
        time.sleep(_POLL_S)


def _try_lock(fd: int, shared: bool) -> bool:
    """Lock ``fd`` without waiting and record this process in it; False if another process holds the lock.

    A shared holder that finds no other holder locks exclusively first, so that it can clear the records of holders
    gone before (killed ones, or ones on other hosts) and then turns its lock shared; the others add their line."""
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except BlockingIOError:
        if not shared:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        alone = False
    if alone:
        os.ftruncate(fd, 0)
    os.write(fd, Holder.line().encode())
    if alone and shared:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # taken exclusively in between by another process
            return False
    return True


def _release(fd: int, path: Path, shared: bool) -> None:
    """Unlock; the last holder deletes the lock file (a shared holder is the last when it can lock it alone)."""
    import fcntl
    try:
        if shared:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # other holders remain: the last one deletes it
        if _same_file(fd, path):
            Path(path).unlink(missing_ok=True)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path, what: str, shared: bool = False, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock ``path`` (an advisory lock file, created if missing and deleted by its last holder) for the block:
    exclusively (one holder), or ``shared`` with other shared holders but never with an exclusive one.

    Another holder is refused at once with a one-line PipelineError naming it (pid, host, since when, its script) and
    the command to run after it; with ``wait`` seconds a line says who holds it and that this process waits, and the
    error comes after that time. ``what`` names what the lock guards ("fold 0 of demo").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, what, shared, wait)
    _HELD.add(fd)
    try:
        yield
    finally:
        _HELD.discard(fd)
        _release(fd, path, shared)


def exclusive(path: Path, what: str, wait: float = 0.0):
    """``locked(path, what, wait=wait)``: one holder at a time."""
    return locked(path, what, wait=wait)


def check_unlocked(path: Path, what: str, shared: bool = False) -> None:
    """PipelineError if another process holds ``locked(path)`` so that this one could not (``shared``: exclusively);
    creates nothing (a refused run writes nothing)."""
    import fcntl
    from lib.errors import PipelineError
    try:
        fd = _open_lock(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holders = _holders(fd)
        if not _stale(holders):  # a stale one is taken over by locked()
            raise PipelineError(f"{Path(path).parent}: {what} is in use by another process ({_named(holders)}); "
                                f"wait for it to finish, then run {_rerun()} (nothing was changed)") from None
    finally:
        os.close(fd)


def read_bytes(path: Path) -> bytes:
    """The file's bytes; PipelineError naming the file if it cannot be read or is empty."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise PipelineError(f"{path}: empty file (0 bytes)")
    return data


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


class OrderedWriter:
    """The background writer: runs writes on ``threads`` threads, started in the order given, while the caller goes
    on computing. One thread (checkpoints) finishes each write before the next; more (test maps, photo masks) run
    side by side, as PNG and JPEG encoding release the GIL.

    After a write fails, the later ones are skipped (so no file claims a state an earlier file lacks)
    and the error is raised by the next ``submit``, ``flush`` or ``close``. ``flush`` waits for every
    write given so far; use it as a context manager to close it. ``pending`` > 0 bounds memory: ``submit`` first
    waits for the oldest write while that many are queued or running.
    """

    def __init__(self, threads: int = 1, pending: int = 0):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="writer")
        self._futures: list[Future] = []
        self._pending = pending
        self._error: BaseException | None = None

    def submit(self, fn, *args, **kwargs) -> Future:
        """Queue ``fn(*args, **kwargs)``; its future holds what it returns (None if it was skipped)."""
        self._raise()
        while self._pending and len(self._futures) >= self._pending:
            self._futures.pop(0).result()
            self._raise()
        self._futures = [f for f in self._futures if not f.done()] + [self._pool.submit(self._run, fn, args, kwargs)]
        return self._futures[-1]

    def _run(self, fn, args, kwargs):
        if self._error is None:
            try:
                return fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread by _raise
                self._error = e
        return None

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


_CSV_SPECIAL = re.compile(r'[,"\r\n]')


def csv_row(*fields: str) -> str:
    """One CSV line (with its newline) as RFC 4180 writes it: a field holding a comma, a quote or a line break is
    quoted, its quotes doubled ('car, front.jpg' -> '"car, front.jpg"'); others are written as they are (what
    csv.writer does with QUOTE_MINIMAL, at the speed of a join for the usual plain fields)."""
    return ",".join(f'"{f.replace(chr(34), chr(34) * 2)}"' if _CSV_SPECIAL.search(f) else f for f in fields) + "\n"


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
