"""Images that are not 8-bit RGB: reading any of them, the record of the training set's format, normalisation and
display. Imports no torch (deploy.py may use it).

- ``read_pixels``: an encoded image -> (H, W, C) uint8 or uint16 as stored: PNG/BMP/JPEG through cv2
  (``IMREAD_UNCHANGED``; 3 channels in RGB order, 4 in RGBA), TIFF through tifffile (any number of bands, in order).
  8-bit RGB JPEG/PNG keep cv2's reduced-size decoding in ``lib.photos.decode_to_net``; this reader is for the rest.
- ``ImageFormat``: channels, dtype and per-channel mean/std on the value scale. ``RGB8`` is today's normalisation
  (ImageNet statistics x 255), used unchanged for every 8-bit 3-channel training set; other formats carry the
  training set's own statistics (``measure``).
- ``write_record`` / ``read_record``: ``image_format.json`` in the output folder, written by 01, read by 02/03/export.
- ``differs`` / ``convert_command`` / ``convert_file``: an image whose format is not the training set's, the one line
  saying so and the command that converts it.
- ``to_display``: (H, W, 3) uint8 RGB for overlays: grey for one channel, a band triple for N, 16-bit stretched
  between robust percentiles.
"""
from __future__ import annotations

import io
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lib import files
from lib.errors import PipelineError

RECORD = "image_format.json"  # in the output folder, written by 01_prepare.py
MADE_BY = "01_prepare.py"
DTYPES = ("uint8", "uint16")  # the bit depths read; float or 32-bit images are refused
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
TIFF_EXTS = (".tif", ".tiff")
# ImageNet statistics on the 0..255 scale (lib/model.py's MEAN/STD x 255): the normalisation of 8-bit RGB
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}  # IHDR colour type -> channels cv2 gives (grey, RGB, palette, +alpha)
DISPLAY_PERCENTILES = (1.0, 99.0)  # a 16-bit band is shown stretched between these percentiles of its values


# --- reading ---
def _cv2_pixels(raw: bytes) -> np.ndarray | None:
    """(H, W, C) as stored of what cv2 decodes (3 channels in RGB order, 4 in RGBA), or None."""
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.ndim == 2:
        return None if image is None else image[..., None]
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA) if image.shape[2] == 4 else image


def _tiff_pixels(raw: bytes, path: Path) -> np.ndarray:
    """tifffile's reading (any band count); a compression tifffile needs the imagecodecs package for (LZW, JPEG)
    is left to cv2's libtiff, which reads 1, 3 and 4 bands."""
    import tifffile
    try:
        with tifffile.TiffFile(io.BytesIO(raw)) as tif:
            series = tif.series[0]
            image, axes = series.asarray(), series.axes
    except ValueError as e:  # "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package"
        image = _cv2_pixels(raw)
        if image is None:
            raise PipelineError(f"{path}: not a readable TIFF ({e}); pip install imagecodecs, or save it "
                                "uncompressed") from None
        return image
    except (tifffile.TiffFileError, OSError) as e:
        raise PipelineError(f"{path}: not a readable TIFF ({type(e).__name__}: {e})") from None
    if image.ndim == 2:
        return image[..., None]
    if image.ndim == 3 and axes[-2:] == "YX":  # planar: bands first (C, H, W), e.g. a 6-band satellite image
        return np.ascontiguousarray(np.moveaxis(image, 0, -1))
    if image.ndim == 3:  # interleaved samples (H, W, S), e.g. RGB
        return image
    raise PipelineError(f"{path}: a TIFF of {image.ndim} dimensions (axes {axes}); only one image of (H, W) or "
                        "(H, W, bands) is read: save each page as its own file")


def tiff_size(raw: bytes) -> tuple[int, int] | None:
    """(H, W) of a TIFF from its first page's header (any band count: PIL reads few), or None if ``raw`` is no
    readable TIFF."""
    import tifffile
    if raw[:4] not in TIFF_MAGIC:
        return None
    try:
        with tifffile.TiffFile(io.BytesIO(raw)) as tif:
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    except (tifffile.TiffFileError, ValueError, OSError, IndexError):
        return None


def read_pixels(raw: bytes, path: Path) -> np.ndarray:
    """(H, W, C) uint8 or uint16 of the encoded image ``raw`` read from ``path``, as stored (EXIF orientation
    ignored, like masks): C = 1 for grey, 3 in RGB order, 4 in RGBA, any N for a TIFF (bands in file order).
    PipelineError naming the file if it does not decode or its values are not 8- or 16-bit integers."""
    if raw[:4] in TIFF_MAGIC:
        image = _tiff_pixels(raw, path)
    else:
        image = _cv2_pixels(raw)
        if image is None:
            raise PipelineError(f"{path}: not a readable image")
    if image.dtype.name not in DTYPES:
        raise PipelineError(f"{path}: {image.dtype.name} values; images must be 8- or 16-bit integers "
                            f"({', '.join(DTYPES)}): convert it, e.g. scaled to 0..65535 as uint16")
    return image


def write_pixels(path: Path, image: np.ndarray) -> None:
    """Write (H, W, C) or (H, W) uint8/uint16 ``image`` (RGB(A) order for 3/4 channels) to ``path`` atomically:
    TIFF (bands planar, any count) for .tif/.tiff, else cv2 (PNG keeps 16 bits). The inverse of ``read_pixels``."""
    image = image if image.ndim == 3 else image[..., None]
    if path.suffix.lower() in TIFF_EXTS:
        import tifffile
        buffer = io.BytesIO()
        planar = image.shape[2] not in (1, 3, 4)
        data = np.moveaxis(image, -1, 0) if planar else image[..., 0] if image.shape[2] == 1 else image
        tifffile.imwrite(buffer, data, photometric="minisblack" if planar or image.shape[2] == 1 else "rgb",
                         planarconfig="separate" if planar else None)
        files.write_bytes_atomic(path, buffer.getvalue())
        return
    stored = {1: image[..., 0], 3: image[..., ::-1], 4: cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)}.get(image.shape[2])
    if stored is None:
        raise PipelineError(f"{path}: {image.shape[2]} bands need a TIFF (.tif)")
    ok, data = cv2.imencode(path.suffix, np.ascontiguousarray(stored))
    if not ok:
        raise OSError(f"could not encode {path}")
    files.write_bytes_atomic(path, data.tobytes())


def to_net_size(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H0, W0, C) -> (height, width, C) as ``geometry.to_net`` makes it (reflect-pad at full resolution, else
    INTER_AREA), keeping the channel axis cv2 drops for one channel."""
    from lib.geometry import to_net
    out = to_net(image, height, width)
    return out if out.ndim == 3 else out[..., None]


# --- the format of a set of images ---
@dataclass(frozen=True)
class ImageFormat:
    """What every image of a training set is: ``channels``, ``dtype`` ('uint8' or 'uint16') and the per-channel
    ``mean`` and ``std`` on the value scale (0..255 or 0..65535) that normalise it for the network."""
    channels: int
    dtype: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def rgb8(self) -> bool:
        """8-bit RGB: the format every stage handled before, decoded and normalised exactly as then."""
        return self.channels == 3 and self.dtype == "uint8"

    def describe(self) -> str:
        return f"{8 * np.dtype(self.dtype).itemsize}-bit {self.channels}-channel"

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """(..., C) image of this format -> float32 (image - mean) / std, per channel."""
        return ((image.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)


RGB8 = ImageFormat(3, "uint8", IMAGENET_MEAN, IMAGENET_STD)


def kind_of(image: np.ndarray) -> tuple[int, str]:
    """(channels, dtype name) of an (H, W, C) image."""
    return image.shape[2], image.dtype.name


def differs(path: Path, image: np.ndarray, expected: tuple[int, str], what: str) -> str | None:
    """The one line saying that (H, W, C) ``image`` read from ``path`` is not of ``expected`` (channels, dtype), the
    format of ``what`` (e.g. 'the training images'), with the command converting it; None if it is."""
    channels, dtype = kind_of(image)
    if (channels, dtype) == expected:
        return None
    found = ImageFormat(channels, dtype, (), ()).describe()
    wanted = ImageFormat(expected[0], expected[1], (), ()).describe()
    return (f"{path}: a {found} image, but {what} are {wanted}; convert it: "
            f"`{convert_command(path, expected[0], expected[1])}`")


def net_image(raw: bytes, path: Path, fmt: ImageFormat, height: int, width: int, what: str = "the training images"
              ) -> tuple[np.ndarray, tuple[int, int]]:
    """((height, width, C) image of ``fmt`` at the network size, original (H0, W0)) of an image that is not 8-bit RGB
    (8-bit RGB: ``lib.photos.decode_to_net``, cv2's reduced JPEG decoding); PipelineError naming the file and the
    command converting it when its channels or depth are not ``fmt``'s (the format of ``what``)."""
    image = read_pixels(raw, path)
    problem = differs(path, image, (fmt.channels, fmt.dtype), what)
    if problem:
        raise PipelineError(problem)
    return to_net_size(image, height, width), image.shape[:2]


def measure(named_images: Iterable[tuple[Path, np.ndarray]]) -> ImageFormat:
    """The format of a training set from its (path, (H, W, C) image) pairs: channels and dtype (all alike, else a
    PipelineError naming the first image that differs and the command converting it), per-channel mean and std of
    all pixels (float64 sums). An 8-bit 3-channel set gets ``RGB8`` (ImageNet statistics, as before)."""
    first: tuple[int, str] | None = None
    total = squares = None
    count = 0
    for path, image in named_images:
        if first is None:
            first = kind_of(image)
            total = np.zeros(first[0])
            squares = np.zeros(first[0])
        problem = differs(path, image, first, "the training images before it")
        if problem:
            raise PipelineError(problem)
        values = image.reshape(-1, first[0]).astype(np.float64)
        total += values.sum(0)
        squares += (values ** 2).sum(0)
        count += values.shape[0]
    if first is None:
        raise PipelineError("no training images to measure")
    if first == (3, "uint8"):
        return RGB8
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant band: centred, not divided by zero
    return ImageFormat(first[0], first[1], tuple(float(m) for m in mean), tuple(float(s) for s in std))


def _rgb8_set(kinds: list[tuple[int, str, bool]]) -> bool:
    """Whether images of these (channels, dtype, is TIFF) kinds are read as 8-bit RGB, as every set was before: all
    8-bit, some in colour (3 or 4 channels), and no TIFF of other than 1 or 3 bands (bands that RGB would drop)."""
    return (all(dtype == "uint8" for _, dtype, _ in kinds) and any(c in (3, 4) for c, _, _ in kinds)
            and not any(tiff and c not in (1, 3) for c, _, tiff in kinds))


def header_kind(head: bytes) -> tuple[int, str] | None:
    """(channels, dtype) of an image as ``read_pixels`` reads it, from its first 26 bytes alone, where they say:
    JPEG and BMP (8-bit RGB, as cv2 always decodes them for 8-bit RGB sets) and PNG (IHDR's depth and colour
    type); None for others (TIFF: decode it)."""
    if head[:2] in (b"\xff\xd8", b"BM"):
        return 3, "uint8"
    if head[:8] == files.PNG_SIGNATURE and len(head) >= 26 and head[25] in PNG_CHANNELS:
        return PNG_CHANNELS[head[25]], "uint16" if head[24] == 16 else "uint8"
    return None


def survey(paths: list[Path]) -> ImageFormat:
    """The format of the training images ``paths``: ``RGB8`` when every image is read as 8-bit RGB as before
    (JPEG and BMP always; 8-bit PNG/TIFF of which some are in colour), else the one (channels, dtype) they all share
    with its statistics (``measure``), or a PipelineError naming the first image that differs. Decodes only PNG and
    TIFF files (twice where they are not 8-bit RGB: once to see, once to measure)."""
    kinds = []
    for path in paths:
        with open(path, "rb") as f:
            head = f.read(26)
        kind = header_kind(head)
        kinds.append((*kind, False) if kind else (*kind_of(read_pixels(files.read_bytes(path), path)),
                                                  head[:4] in TIFF_MAGIC))
    if _rgb8_set(kinds):
        return RGB8
    return measure((path, read_pixels(files.read_bytes(path), path)) for path in paths)


def check_tiles(fmt: ImageFormat, tile_size: int) -> None:
    """PipelineError unless the tile cache (--tile-size, 8-bit RGB only so far) can hold images of ``fmt``."""
    if tile_size and not fmt.rgb8:
        raise PipelineError(f"--tile-size {tile_size}: the training images are {fmt.describe()}; tiles take 8-bit RGB "
                            "only so far: train on whole images (leave out --tile-size, pick --height/--width)")


# --- the record 01 writes and 02/03/export read ---
SCHEMA = {"channels": int, "dtype": str, "mean": files.ListOf(float), "std": files.ListOf(float)}


def as_dict(fmt: ImageFormat) -> dict:
    """The record of ``fmt`` (``SCHEMA``), as the file and checkpoints hold it."""
    return {"channels": fmt.channels, "dtype": fmt.dtype, "mean": list(fmt.mean), "std": list(fmt.std)}


def write_record(output: Path, fmt: ImageFormat) -> None:
    files.write_json(output / RECORD, as_dict(fmt))


def from_dict(record: dict, where: str, repair: str) -> ImageFormat:
    """The ``ImageFormat`` of a record (the file's or a checkpoint's), checked: PipelineError naming ``where``."""
    files.check_schema(Path(where), record, SCHEMA, MADE_BY, repair)
    channels, dtype, mean, std = record["channels"], record["dtype"], record["mean"], record["std"]
    if dtype not in DTYPES or channels < 1 or len(mean) != channels or len(std) != channels \
            or not all(s > 0 for s in std):
        raise PipelineError(f"{where}: damaged: {channels} channels of {dtype} with {len(mean)} means and "
                            f"{len(std)} positive stds expected alike; {repair}")
    return ImageFormat(channels, dtype, tuple(float(m) for m in mean), tuple(float(s) for s in std))


def read_record(output: Path) -> ImageFormat:
    """The training set's format recorded in ``output``; PipelineError naming the file if it is missing or damaged."""
    path = output / RECORD
    return from_dict(files.read_json(path, MADE_BY, SCHEMA), str(path), f"re-run {MADE_BY}")


def format_of(output: Path) -> ImageFormat:
    """The recorded format of the training set prepared in ``output``; ``RGB8`` for a folder prepared before the
    record existed (01 then read every image as 8-bit RGB). PipelineError if the record is damaged."""
    return read_record(output) if (output / RECORD).exists() else RGB8


# --- repair: converting one image to the training set's format ---
def convert(image: np.ndarray, channels: int, dtype: str) -> np.ndarray:
    """(H, W, C) image -> (H, W, ``channels``) of ``dtype``: 8<->16 bit by x257 / //257 (full range to full
    range), 1 -> N by repeating the grey band, 3/4 -> 1 by cv2's luma of RGB, N -> fewer by keeping the first."""
    if image.dtype.name != dtype:
        image = (image.astype(np.uint32) * 257).astype(np.uint16) if dtype == "uint16" else \
            (image // 257).astype(np.uint8)
    have = image.shape[2]
    if have == channels:
        return image
    if have == 1:
        return np.repeat(image, channels, axis=2)
    if channels == 1 and have in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)[..., None]
    if channels < have:
        return np.ascontiguousarray(image[..., :channels])
    raise PipelineError(f"cannot make {channels} bands of {have}")


def convert_file(path: str, channels: int, dtype: str) -> None:
    """Rewrite the image at ``path`` in place as ``channels`` channels of ``dtype`` (``convert``)."""
    target = Path(path)
    write_pixels(target, convert(read_pixels(files.read_bytes(target), target), channels, dtype))


def convert_command(path: Path, channels: int, dtype: str) -> str:
    """The shell command (run from the project folder) that rewrites ``path`` as ``channels`` x ``dtype``."""
    from lib.invocation import python
    return shlex.join([python(), "-c", "import sys; from lib.imageformat import convert_file; "
                       "convert_file(sys.argv[1], int(sys.argv[2]), sys.argv[3])", str(path), str(channels), dtype])


# --- display ---
def parse_bands(text: str) -> tuple[int, int, int]:
    """'3,2,1' (1-based, as --display-bands takes them) -> (2, 1, 0)."""
    try:
        bands = tuple(int(b) - 1 for b in text.split(","))
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 0:
        raise PipelineError(f"--display-bands {text}: three band numbers from 1 expected, e.g. 3,2,1")
    return bands  # type: ignore[return-value]


def _stretch(band: np.ndarray) -> np.ndarray:
    low, high = np.percentile(band, DISPLAY_PERCENTILES)
    if high <= low:
        high = low + 1
    return np.clip((band.astype(np.float32) - low) * (255.0 / (high - low)), 0, 255).round().astype(np.uint8)


def display_pixels(raw: bytes, path: Path, fmt: ImageFormat = RGB8, bands: str = "1,2,3") -> np.ndarray | None:
    """(H, W, 3) uint8 RGB to show the encoded image ``raw`` (from ``path``) of a set of ``fmt`` under its masks, at
    its own size (no EXIF rotation, like masks); None if cv2 cannot decode an 8-bit RGB one. 8-bit RGB: cv2's
    decoding as always; other formats: ``to_display`` of ``bands`` (--display-bands, 1-based)."""
    if fmt.rgb8:
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        return None if image is None else image[..., ::-1]
    return to_display(read_pixels(raw, path), parse_bands(bands))


def to_display(image: np.ndarray, bands: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
    """(H, W, 3) uint8 RGB to show (H, W, C) ``image``: 8-bit RGB as it is; one channel as grey; N channels as
    ``bands`` (0-based; PipelineError if the image has fewer); 16-bit bands each stretched between their 1st and
    99th percentiles (``DISPLAY_PERCENTILES``), 8-bit bands as they are."""
    channels = image.shape[2]
    if channels == 3 and image.dtype == np.uint8:
        return image
    if channels == 1:
        picked = np.repeat(image, 3, axis=2)
    else:
        if max(bands) >= channels:
            raise PipelineError(f"--display-bands {','.join(str(b + 1) for b in bands)}: the image has only "
                                f"{channels} bands")
        picked = image[..., list(bands)]
    if picked.dtype == np.uint8:
        return np.ascontiguousarray(picked)
    if channels == 1:
        return np.repeat(_stretch(picked[..., :1]), 3, axis=2)
    return np.stack([_stretch(picked[..., i]) for i in range(3)], axis=2)
