"""What a source file was when something was made from it: size, modification time and a digest of its bytes.

Caches (``output/cache/``) and test maps (``test_probs/<id>.png``) record the fingerprint of every file they were
made from, and a reader checks it before trusting them: a source whose bytes changed is re-read (the cache is
rebuilt, the map predicted again) or refused, never trusted because its id is known.

Checking is cheap where nothing changed: ``is_current`` compares size and ``st_mtime_ns`` first, and only a file
whose size or time differs is read and hashed again, so a file rewritten with the same bytes (``touch``, a copy) is
still current. A replacement that keeps both the size and the nanosecond time (``cp -p`` / ``rsync -t`` of another
file of exactly the same size) is seen only where the bytes are hashed anyway: ``01_prepare.py`` reads every
training file and compares digests, not times.

The digest is SHA-256 cut to 128 bits: with the CPUs' SHA instructions it hashes 1.3-1.8 GB/s on one core here, as
fast as sha1 and 1.6 times blake2b, 2.4 times md5 (benchmarks/results/content_keys.md). A folder (an instance-mask folder
``train_masks/<id>/``) is fingerprinted through its mask files: the total of their sizes, the latest time of the
folder and its files (adding, removing or renaming a file changes the folder's), and a digest of their names and
digests.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

ALGORITHM = "sha256/128"  # recorded beside fingerprints: another algorithm later makes them unequal, not wrong
_HEX = 32  # hex digits kept of the SHA-256 digest (128 bits)


@dataclass(frozen=True)
class Fingerprint:
    """A source file (or instance folder) as it was read: ``size`` bytes, ``mtime_ns``, ``digest`` of its bytes."""
    size: int
    mtime_ns: int
    digest: str

    def record(self) -> list:
        """``[size, mtime_ns, digest]``: how JSON files store it."""
        return [self.size, self.mtime_ns, self.digest]

    def text(self) -> str:
        """``'<size> <mtime_ns> <digest>'``: how a map's PNG text chunk stores it."""
        return f"{self.size} {self.mtime_ns} {self.digest}"

    @classmethod
    def from_record(cls, record) -> "Fingerprint | None":
        """The inverse of ``record`` (or of ``text`` given a str); None for anything else (an older or damaged file)."""
        if isinstance(record, str):
            record = record.split(" ")
        if not isinstance(record, (list, tuple)) or len(record) != 3:
            return None
        size, mtime, digest = record
        try:
            size, mtime = int(size), int(mtime)
        except (TypeError, ValueError):
            return None
        if not isinstance(digest, str) or len(digest) != _HEX:
            return None
        return cls(size, mtime, digest)


def digest_bytes(data: bytes) -> str:
    """The digest of ``data`` (hex)."""
    return hashlib.sha256(data).hexdigest()[:_HEX]


def of_bytes(data: bytes, before: os.stat_result) -> Fingerprint:
    """The fingerprint of a file whose bytes ``data`` were read after ``before = os.stat(path)``.

    Stat first, then read: a file written while it was read then has a newer time than the one recorded, so the
    next check hashes it again instead of trusting it."""
    return Fingerprint(before.st_size, before.st_mtime_ns, digest_bytes(data))


def of_path(path: Path) -> Fingerprint:
    """The fingerprint of a file or an instance folder (read and hashed now). OSError if it is missing."""
    path = Path(path)
    if path.is_dir():
        return _of_folder(path)
    before = os.stat(path)
    with open(path, "rb") as f:
        return of_bytes(f.read(), before)


def _folder_files(folder: Path) -> list[Path]:
    from lib.layout import MASK_EXTS, files_in
    return files_in(folder, MASK_EXTS)


def _folder_stat(folder: Path, paths: list[Path]) -> tuple[int, int]:
    stats = [os.stat(p) for p in paths]
    return sum(s.st_size for s in stats), max([os.stat(folder).st_mtime_ns, *(s.st_mtime_ns for s in stats)])


def _of_folder(folder: Path) -> Fingerprint:
    paths = _folder_files(folder)
    size, mtime = _folder_stat(folder, paths)
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.name}\0{of_path(p).digest}\n".encode())
    return Fingerprint(size, mtime, h.hexdigest()[:_HEX])


def stat_of(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) as a fingerprint records them, or None when the file (or folder) is gone."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return _folder_stat(Path(path), _folder_files(Path(path)))
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def recheck(path: Path, recorded: Fingerprint) -> Fingerprint | None:
    """``path``'s fingerprint now if it still holds the bytes ``recorded`` was taken of, else None (changed or gone).

    Stat first; the file is read and hashed only when its size or time differ from the recorded ones (then the
    fingerprint returned carries the new time, for the record to be refreshed)."""
    now = stat_of(path)
    if now is None:
        return None
    if now == (recorded.size, recorded.mtime_ns):
        return recorded
    try:
        fresh = of_path(path)
    except OSError:
        return None
    return fresh if fresh.digest == recorded.digest else None


def is_current(path: Path, recorded: Fingerprint) -> bool:
    """Does ``path`` still hold the bytes ``recorded`` was taken of? (``recheck``)"""
    return recheck(path, recorded) is not None
