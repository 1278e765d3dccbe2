"""Masks for any photos from an exported run (05_export.py) without PyTorch: onnxruntime, numpy and OpenCV only.

``python deploy.py output/demo/export/model.onnx --images photos/ --images-out masks/`` writes what
``03_predict.py --images`` writes (``<name>_mask.png``, ``<name>_overlay.jpg``, masks.csv) with the same resizing,
TTA (inside the graph), threshold and post-processing, read from export.json beside the graph. Imports nothing that
imports torch (tests/test_export.py checks it), so it runs where only ``pip install onnxruntime opencv-python-headless
numpy`` was done plus this repository's lib/.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lib import files, rle
from lib.errors import PipelineError
from lib.geometry import padded_size, to_net
from lib.task import Task

ONNX_NAME, JSON_NAME = "model.onnx", "export.json"
OPSET = 17  # the TorchScript exporter's well-supported opset; onnxruntime >= 1.14 runs it
RECORD_VERSION = 1
MASKS_CSV = "masks.csv"


def onnx_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_command(onnx_path: Path) -> str:
    """The 05_export.py command that writes ``onnx_path`` and its JSON again (output/<experiment>/export/)."""
    run = Path(onnx_path).resolve().parent.parent
    return shlex.join(["python", "05_export.py", "--output", str(run.parent), "--experiment", run.name])


@dataclass
class Exported:
    """An exported graph, its export.json record and an onnxruntime session of it."""
    path: Path
    record: dict
    session: object
    task: Task

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.record["input"]["size"])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) uint8 RGB at the network size -> (N, channels, H, W) float32 mean probabilities."""
        return self.session.run(None, {self.record["input"]["name"]: images})[0]

    def maps(self, images: np.ndarray) -> np.ndarray:
        """The uint8 maps ``Task.to_maps`` makes of the probabilities: (N, H, W) binary, (N, C * H, W) classes."""
        u8 = np.round(self.probabilities(images) * 255).astype(np.uint8)
        n, c, h, w = u8.shape
        return u8[:, 0] if self.task.binary else u8.reshape(n, c * h, w)


def load(onnx_path: Path, providers: list[str] | None = None) -> Exported:
    """The graph ``onnx_path`` and export.json beside it, checked to belong together (the JSON records the graph's
    sha256); a PipelineError naming the file and the 05_export.py command that writes both again otherwise."""
    import onnxruntime as ort
    path = Path(onnx_path)
    again = f"export again: `{export_command(path)}`"
    if not path.is_file():
        raise PipelineError(f"{path}: no such ONNX file; {again}")
    meta = path.with_name(JSON_NAME)
    if not meta.is_file():
        raise PipelineError(f"{meta}: missing (the JSON 05_export.py writes beside {path.name}); {again}")
    try:
        record = json.loads(meta.read_text())
        digest, task = record["onnx_sha256"], Task.from_record(record["task"])
        record["input"]["size"], record["threshold"], record["postprocess"], record["tta"]
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{meta}: not an export record ({type(e).__name__}: {e}); {again}") from None
    data = path.read_bytes()
    if onnx_digest(data) != digest:
        raise PipelineError(f"{meta}: describes another ONNX file than {path} (sha256 differs: exported from "
                            f"another run, or one of them replaced); {again}")
    session = ort.InferenceSession(data, providers=providers or ["CPUExecutionProvider"])
    return Exported(path, record, session, task)


def net_image(path: Path, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, height, width) uint8 RGB at the network size and the photo's (H0, W0), as 03_predict.py --images makes it
    (lib.cache.decode_net_image: decoded reduced by 8, 4 or 2 when that is still at least the network size, then
    INTER_AREA resize; reflect-padded at full resolution). A photo of other than 3 channels is refused."""
    raw = np.fromfile(path, np.uint8)
    full = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if full is None:
        raise PipelineError(f"{path}: not a readable image")
    channels = 1 if full.ndim == 2 else full.shape[2]
    if channels != 3:
        fix = shlex.join(["python", "-c", "import cv2, sys; cv2.imwrite(sys.argv[1], cv2.imread(sys.argv[1], "
                          "cv2.IMREAD_COLOR))", str(path)])
        raise PipelineError(f"{path}: {channels} channel(s); the model takes 3 (RGB); nothing was written: convert "
                            f"it to RGB: `{fix}`")
    h0, w0 = full.shape[:2]
    flag = cv2.IMREAD_COLOR
    for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                            (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if h0 // factor >= height and w0 // factor >= width and (height, width) != padded_size(h0, w0):
            flag = reduced
            break
    image = cv2.cvtColor(cv2.imdecode(raw, flag | cv2.IMREAD_IGNORE_ORIENTATION), cv2.COLOR_BGR2RGB)
    image = to_net(image, height, width) if flag == cv2.IMREAD_COLOR else \
        cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), (h0, w0)


def predict_photos(model: Exported, paths: list[Path], out: Path, batch: int = 8, rle_order: str = "row") -> Path:
    """Write ``<stem>_mask.png``, ``<stem>_overlay.jpg`` and masks.csv for ``paths`` into ``out`` (every photo is
    read and checked before anything is written); returns ``out``."""
    h, w = model.size
    threshold, post, task = float(model.record["threshold"]), model.record["postprocess"], model.task
    min_area = float(model.record.get("min_area", 0.0))  # records before gating: none
    loaded = [net_image(path, h, w) for path in paths]  # refuses a bad photo before any file is written
    out.mkdir(parents=True, exist_ok=True)
    lines = [files.csv_row("img", "rle_mask")]
    for start in range(0, len(paths), batch):
        chunk = loaded[start:start + batch]
        maps = model.maps(np.stack([image for image, _ in chunk]))
        for path, (_, orig), m in zip(paths[start:start + batch], chunk, maps):
            decision = task.decide_maps([m], [1.0], orig, threshold, post, min_area)
            photo = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            png_values, shown = task.mask_pictures(photo[..., ::-1], decision)
            files.write_bytes_atomic(out / f"{path.stem}_mask.png", cv2.imencode(".png", png_values)[1].tobytes())
            files.write_bytes_atomic(out / f"{path.stem}_overlay.jpg",
                                     cv2.imencode(".jpg", shown[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
            lines += [files.csv_row(k, rle.encode(c, rle_order))
                      for k, c in zip(task.row_ids(path.name, path.stem), task.class_masks(decision))]
    files.write_text_atomic(out / MASKS_CSV, "".join(lines))
    return out
