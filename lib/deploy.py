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

from lib import photos
from lib.errors import PipelineError
from lib.task import Task

ONNX_NAME, JSON_NAME = "model.onnx", "export.json"
OPSET = 17  # the TorchScript exporter's well-supported opset; onnxruntime >= 1.14 runs it
RECORD_VERSION = 1


def onnx_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_command(onnx_path: Path) -> str:
    """The 05_export.py command that writes ``onnx_path`` and its JSON again (output/<experiment>/export/)."""
    from lib.invocation import suggested  # the standard library only: no params, no PyTorch
    run = Path(onnx_path).resolve().parent.parent
    return suggested("05_export.py", ["--output", str(run.parent), "--experiment", run.name])


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
    again = f"export again: {export_command(path)}"
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


class WrongChannels(PipelineError):
    """A photo the model cannot take: it refuses the whole run before anything is written (not a skip)."""


def net_image(path: Path, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, height, width) uint8 RGB at the network size and the photo's (H0, W0), as 03_predict.py --images makes
    it (``photos.decode_to_net``). PipelineError if it cannot be read (the photo is skipped); ``WrongChannels`` for a
    photo of other than 3 channels (the run is refused)."""
    raw = photos.read_image_bytes(path)
    full = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if full is None:
        raise PipelineError(f"{path}: not a readable image")
    channels = 1 if full.ndim == 2 else full.shape[2]
    if channels != 3:
        from lib.invocation import python
        fix = shlex.join([python(), "-c", "import cv2, sys; cv2.imwrite(sys.argv[1], cv2.imread(sys.argv[1], "
                          "cv2.IMREAD_COLOR))", str(path)])
        raise WrongChannels(f"{path}: {channels} channel(s); the model takes 3 (RGB); nothing was written: convert "
                            f"it to RGB: `{fix}`")
    size = full.shape[:2]
    del full
    return np.ascontiguousarray(photos.decode_to_net(raw, path, size, height, width).transpose(2, 0, 1)), size


def predict_photos(model: Exported, paths: list[Path], out: Path, batch: int = 8, rle_order: str = "row",
                   overwrite: bool = False, again: str = "") -> tuple[list[int], photos.Skipped]:
    """Write ``<stem>_mask.png``, ``<stem>_overlay.jpg`` and masks.csv for ``paths`` into ``out``, as
    03_predict.py --images does (lib/photos.py: the same skips, writing and record): every photo is read first; one
    that cannot be read is skipped with a line, one of another channel count refuses the run, a file in ``out`` that
    neither writer wrote refuses it unless ``overwrite`` (``again``: the command that asks), all before anything is
    written. Returns the indices predicted and those skipped; PipelineError when none could be."""
    h, w = model.size
    threshold, post, task = decision_value(model.record["threshold"]), model.record["postprocess"], model.task
    min_area = decision_value(model.record.get("min_area", 0.0))  # records before gating: none
    skipped, loaded = photos.Skipped(), {}
    for i, path in enumerate(paths):
        why = photos.not_a_file(path)
        if why is None:
            try:
                loaded[i] = net_image(path, h, w)
            except WrongChannels:
                raise
            except (PipelineError, *photos.DECODER_ERRORS) as e:
                why = photos.unreadable(path, e)
        if why is not None:
            skipped.add(i, why)
    if not loaded:
        raise PipelineError(skipped.none_predicted())
    record = photos.claim(out, paths, overwrite, again)
    rows: dict[int, list[tuple[str, str]]] = {}
    todo = sorted(loaded)
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        maps = model.maps(np.stack([loaded[i][0] for i in chunk]))
        for i, m in zip(chunk, maps):
            _, photo_rows, why = photos.write_photo(i, paths[i], m, loaded[i][1], threshold, out, rle_order, task, post,
                                                      min_area)
            if why:
                skipped.add(i, why)
            else:
                rows[i] = photo_rows
    return photos.finish(out, record, paths, rows, skipped), skipped


def decision_value(value) -> float | tuple[float, ...]:
    """A threshold or minimum area of export.json: one number, or a list of one per label (``--multilabel``)."""
    return tuple(float(v) for v in value) if isinstance(value, list) else float(value)
