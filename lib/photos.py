"""Photos given on a command line and the files written for them, shared by ``03_predict.py --images``
(lib/overlay.py) and the torch-free ``deploy.py`` (lib/deploy.py): imports no torch, pandas or PIL.

- ``read_image_bytes``, ``decode_to_net``: a photo's bytes, checked, and the photo at the network size (as training
  and 03 see it: lib/cache.py decodes through the same function).
- ``photo_paths``: the photos of files, folders and globs, each once.
- The record of what was written (``WRITTEN`` in the output folder, a digest per file): a file there that neither
  writer wrote, or that was changed since, is never replaced unless asked (--overwrite): ``claim`` before the first
  write, ``finish`` after the last.
- ``Skipped``: the photos that could not be read, each said in one line and counted; the run fails only when none
  could be predicted.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from lib import files, fingerprint, rle
from lib.errors import PipelineError, listing
from lib.geometry import REDUCED_DECODE, from_reduced, padded_size, to_net
from lib.imageformat import RGB8, ImageFormat, display_pixels
from lib.layout import PHOTO_EXTS, split_name
from lib.task import Task

MASKS_CSV = "masks.csv"
# In the output folder: {file name: digest, null while being written}, kept by 03_predict.py --images and deploy.py
# alike (either replaces the other's files; the name is the one earlier runs wrote).
WRITTEN = ".written_by_03_predict.json"
WRITERS = "03_predict.py --images or deploy.py"
JPEG_EOI = b"\xff\xd9"
DECODER_ERRORS = (OSError, ValueError, cv2.error)  # a decoder's own failures on odd bytes or modes


# --- one photo ---
def read_image_bytes(path: Path) -> bytes:
    """The file's bytes; PipelineError naming the file if it is unreadable, empty or a truncated JPEG."""
    data = files.read_bytes(path)
    if data[:2] == b"\xff\xd8" and JPEG_EOI not in data[-16:]:
        raise PipelineError(f"{path}: truncated JPEG (no end-of-image marker); download it again")
    return data


def decode_to_net(raw: bytes, path: Path, size: tuple[int, int], height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB of the encoded photo ``raw`` (read from ``path``) whose size is (H0, W0) ``size``:
    decoded reduced by 8, 4 or 2 (libjpeg's DCT scaling, several times faster) when that is still at least the
    network size, then shrunk by the area each pixel covers at full resolution (``geometry.from_reduced``: in line
    with its mask); else decoded whole and ``to_net`` (reflect-padded at full resolution). PipelineError naming the
    file if it does not decode."""
    h0, w0 = size
    flag, factor = cv2.IMREAD_COLOR, 1
    for k, reduced in REDUCED_DECODE:
        if h0 // k >= height and w0 // k >= width and (height, width) != padded_size(h0, w0):
            flag, factor = reduced, k
            break
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)  # as stored, like masks
    if image is None:
        raise PipelineError(f"{path}: not a readable image")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if flag == cv2.IMREAD_COLOR:
        return to_net(image, height, width)
    return from_reduced(image, factor, (h0, w0), (height, width))


def not_a_file(path: Path) -> str | None:
    """Why ``path`` (named like a photo) is no file to decode, or None."""
    if path.is_file():
        return None
    kind = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "gone (deleted meanwhile)"
    return f"{path}: {kind}, not a photo"


def unreadable(path: Path, error: Exception) -> str:
    """The skip line of a photo whose reading or decoding raised ``error`` (a PipelineError, or DECODER_ERRORS)."""
    return str(error) if isinstance(error, PipelineError) else \
        f"{path}: not a readable image ({type(error).__name__}: {error})"


# --- the photos of a command line ---
def _named_like_photos(folder: Path) -> list[Path]:
    """The entries of ``folder`` named like photos (a photo extension, not hidden), sorted: files, and anything else
    so named (a folder ``x.png``), which the writers then skip by name rather than leaving out unsaid."""
    return sorted(Path(e.path) for e in os.scandir(folder)
                  if not e.name.startswith(".") and split_name(e.name, PHOTO_EXTS) is not None)


def photo_paths(sources: list[str]) -> list[Path]:
    """Files, folders (their photos, sorted) and glob patterns (``**`` for any depth) -> photo paths in that order,
    each once. In a folder, the masks and overlays an earlier run wrote there are not photos. Entries named like
    photos that are not files are kept: the writers skip them with a line each."""
    out: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            ours = written_before(path)
            found = [p for p in _named_like_photos(path) if p.name not in ours]
        elif any(c in source for c in "*?[") and not path.exists():  # '**' matches any depth of folders
            found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).suffix.lower() in PHOTO_EXTS)
        elif path.is_file():
            found = [path]
        else:
            raise PipelineError(f"{source}: no such file or folder (--images takes photos, folders and globs)")
        if not found:
            where = "matches no photo" if not path.exists() else "holds no photo"
            raise PipelineError(f"{source}: {where} ({', '.join(sorted(PHOTO_EXTS))})")
        out += [p for p in found if p not in out]
    stems: dict[str, Path] = {}
    for p in out:
        if p.stem in stems:
            raise PipelineError(f"{p} and {stems[p.stem]}: two photos named {p.stem}; their masks would have the "
                                "same name: predict them in two runs with different --images-out")
        stems[p.stem] = p
    return out


def outputs_of(paths: list[Path]) -> list[str]:
    """The names written for these photos: a mask and an overlay each, and masks.csv."""
    return [name for p in paths for name in (f"{p.stem}_mask.png", f"{p.stem}_overlay.jpg")] + [MASKS_CSV]


# --- what was written: never replace a file the project did not write ---
def _digest(path: Path) -> str:
    return fingerprint.digest_bytes(path.read_bytes())


def written_before(out: Path) -> dict[str, str | None]:
    """What earlier runs wrote in ``out`` ({name: digest, None while a run was writing it}); an unreadable or
    damaged record counts as none (nothing is then taken for ours)."""
    try:
        record = json.loads((out / WRITTEN).read_text())
    except (OSError, ValueError):
        return {}
    return {} if files.schema_problem(record, files.MapOf((str, type(None)))) else record


def check_overwrites(out: Path, names: list[str], overwrite: bool, again: str) -> dict[str, str | None]:
    """PipelineError, before anything is written, if a file to be written exists and is not one an earlier run
    wrote (or was changed since), naming ``again`` (the command with --overwrite) as the way to replace them.
    Returns the record of what earlier runs wrote."""
    ours = written_before(out)
    theirs = [n for n in names if (out / n).exists() and not overwrite and
              (n not in ours or (ours[n] is not None and ours[n] != _digest(out / n)))]
    if theirs:
        raise PipelineError(f"{out / theirs[0]}: exists and was not written by {WRITERS} (or was changed since)"
                            f"{listing(theirs[1:], 0, more=', and {} more')}; nothing was written: give another "
                            f"--images-out, or replace them: {again}")
    return ours


def _record(out: Path, record: dict[str, str | None]) -> None:
    files.write_json(out / WRITTEN, dict(sorted(record.items())))


def claim(out: Path, paths: list[Path], overwrite: bool, again: str) -> dict[str, str | None]:
    """``check_overwrites`` of everything written for ``paths``, then the folder and the record marking those names
    ours (ours from now on, even if the run is killed): call before the first write. Returns the earlier record."""
    names = outputs_of(paths)
    record = check_overwrites(out, names, overwrite, again)
    out.mkdir(parents=True, exist_ok=True)
    _record(out, record | dict.fromkeys(names))
    return record


def _drop_skipped(out: Path, record: dict[str, str | None], names: list[str]) -> dict[str, str | None]:
    """The record of what earlier runs wrote, less the mask and overlay of each photo skipped now; those files are
    deleted where an earlier run wrote them and nobody changed them since (they showed a photo that is no longer
    readable); a file of the user's (--overwrite) stays as it is, no longer counted as ours."""
    for name in names:
        if record.get(name) is not None and (out / name).is_file() and _digest(out / name) == record[name]:
            (out / name).unlink()
    return {k: v for k, v in record.items() if k not in names}


class Skipped(dict):
    """{photo index: why it was skipped}; each is said in one line as it is added (``say``: to stderr; under a tqdm
    bar, ``tqdm.write`` to stderr)."""

    def __init__(self, say: Callable[[str], None] | None = None):
        super().__init__()
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))

    def add(self, i: int, why: str) -> None:
        self[i] = why
        self.say(f"skipped {why}")

    def none_predicted(self) -> str:
        """The error when every photo was skipped: the one reason, or the first and how many more."""
        first = self[min(self)]
        return first if len(self) == 1 else (f"none of the {len(self)} photos could be read, each skipped (named "
                                             f"above); the first: {first}")

    def summary(self, total: int) -> str:
        return (f"skipped {len(self)} of {total} file(s) that could not be read (each named above; no mask, no "
                "masks.csv row)")


def finish(out: Path, record: dict[str, str | None], paths: list[Path], rows: dict[int, list[tuple[str, str]]],
           skipped: Skipped) -> list[int]:
    """After the masks and overlays of the photos in ``rows`` ({index: [(row id, RLE), ...]}) were written:
    masks.csv of those rows in photo order and the record of their digests; the earlier outputs of the photos
    skipped now are dropped (``_drop_skipped``). PipelineError when no photo was predicted. Returns the indices
    predicted."""
    done = [i for i in range(len(paths)) if i in rows]
    left = _drop_skipped(out, record, [name for i in skipped for name in outputs_of([paths[i]])[:2]])
    if not done:
        _record(out, left)
        raise PipelineError(skipped.none_predicted())
    lines = [files.csv_row("img", "rle_mask")] + [files.csv_row(k, code) for i in done for k, code in rows[i]]
    files.write_text_atomic(out / MASKS_CSV, "".join(lines))
    ours = [name for i in done for name in outputs_of([paths[i]])[:2]] + [MASKS_CSV]
    _record(out, left | {name: _digest(out / name) for name in ours})
    return done


def write_photo(i: int, path: Path, maps: np.ndarray, orig: tuple[int, int], threshold: float, out: Path,
                rle_order: str, task: Task, post: str, min_area: float | tuple[float, ...] = 0.0,
                fmt: ImageFormat = RGB8, bands: str = "1,2,3") -> tuple[int, list[tuple[str, str]], str]:
    """Mask PNG (0/255, or the class index of each pixel), overlay and masks.csv rows of photo ``i`` at its own
    size (H0, W0) ``orig``, from its uint8 network-size maps (``Task.to_maps``): (i, [(row id, RLE), ...], ""), or
    (i, [], why) when the photo does not decode whole (nothing written for it). ``min_area``: the tuned gating (a
    mask smaller than this fraction of the image is emptied; one per scored class of a multi-class or multi-label
    task). ``fmt``, ``bands``: the models' image format and
    --display-bands, how the overlay shows the photo (``imageformat.display_pixels``)."""
    try:
        image = display_pixels(read_image_bytes(path), path, fmt, bands)  # as stored, like the mask
    except PipelineError as e:
        return i, [], str(e)
    if image is None or image.shape[:2] != orig:
        return i, [], f"{path}: not a readable image (it does not decode whole)"
    decision = task.decide_maps([maps], [1.0], orig, threshold, post, min_area)
    png_values, shown = task.mask_pictures(image, decision)
    ok1, png = cv2.imencode(".png", png_values)
    ok2, jpg = cv2.imencode(".jpg", shown[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not (ok1 and ok2):
        raise OSError(f"could not encode the mask or overlay of {path}")
    files.write_bytes_atomic(out / f"{path.stem}_mask.png", png.tobytes())
    files.write_bytes_atomic(out / f"{path.stem}_overlay.jpg", jpg.tobytes())
    codes = [rle.encode(m, rle_order) for m in task.class_masks(decision)]
    return i, list(zip(task.row_ids(path.name, path.stem), codes)), ""
