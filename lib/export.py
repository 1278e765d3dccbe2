"""05_export.py: a finished run's predicting models and tuned TTA as one ONNX graph, and the JSON a predictor needs.

The graph takes a uint8 (N, 3, H, W) RGB batch at the network size (dynamic N) and returns the mean probabilities
(N, channels, H, W) float32 of the models over the TTA mode's augmentations: what ``lib.predict.predict_batch``
computes before its uint8 rounding. ``export.json`` beside it holds the rest (sizes, padding, normalisation inside
the graph, threshold, post-processing, classes, the models' and the ONNX file's digests); lib/deploy.py reads both
without PyTorch.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lib import files, geometry, tta
from lib.deploy import JSON_NAME, ONNX_NAME, RECORD_VERSION, OPSET, onnx_digest
from lib.errors import PipelineError
from lib.model import MEAN, STD, unwrap
from lib.overlay import choose_tta_threshold
from lib.predict import Ensemble, load_fold_models
from params import Params

EXPORT_DIR = "export"  # output/<experiment>/export/{model.onnx, export.json}


def export_dir(p: Params) -> Path:
    return files.run_dir(p.output_dir, p.experiment) / EXPORT_DIR


class Averaged(nn.Module):
    """uint8 (N, 3, H, W) -> mean probability (N, channels, H, W) of ``models`` with TTA ``mode`` (lib/tta.py)."""

    def __init__(self, ens: Ensemble, mode: str):
        super().__init__()
        self.models, self.mode, self.task = nn.ModuleList(ens.models), mode, ens.task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = None
        for model in self.models:
            prob = tta.predict_proba(model, images, self.mode, self.task)
            total = prob if total is None else total + prob
        return total / len(self.models)


def onnx_bytes(ens: Ensemble, mode: str) -> bytes:
    """The ensemble with TTA ``mode`` as an ONNX graph (TorchScript exporter, opset OPSET, dynamic batch), fp32."""
    net = Averaged(ens, mode).to("cpu", memory_format=torch.contiguous_format).float().eval()
    h, w = ens.size
    example = torch.zeros(1, 3, h, w, dtype=torch.uint8)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (example,), buffer, input_names=["images"], output_names=["probs"],
                          dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    return buffer.getvalue()


def record(p: Params, ens: Ensemble, mode: str, threshold: float | Sequence[float], post: str, source: str,
           digest: str, min_area: float | Sequence[float] = 0.0) -> dict:
    """What export.json holds: everything lib/deploy.py needs besides the graph; the threshold and minimum area are
    one number, or a list of one per label (multi-label) or per class 1..C-1 (multi-class minimum areas)."""
    h, w = ens.size
    return {"version": RECORD_VERSION, "onnx": ONNX_NAME, "onnx_sha256": digest, "opset": OPSET,
            "experiment": p.experiment, "run": str(files.run_dir(p.output_dir, p.experiment)),
            "input": {"name": "images", "dtype": "uint8", "layout": "NCHW", "colour": "RGB", "size": [h, w]},
            "output": {"name": "probs", "dtype": "float32", "what": "mean probability over models and TTA"},
            "normalisation": {"mean": list(MEAN), "std": list(STD), "scale": 255, "inside_graph": True},
            "resize": {"stride": geometry.STRIDE, "full_resolution": "reflect-pad to a multiple of the stride, "
                       "crop back", "other": "INTER_AREA down (decoded reduced when 2/4/8x larger), bilinear back"},
            "orig_size": [geometry.ORIG_H, geometry.ORIG_W],
            "tta": mode, "threshold": threshold, "postprocess": post, "min_area": min_area, "decided_by": source,
            "task": ens.task.record(), "colors": [list(c) for c in ens.task.colors],
            "models": ens.fingerprints}


def check_rgb8(p: Params, ens: Ensemble) -> None:
    """PipelineError (before anything is written) unless the models take 8-bit RGB: the ONNX graph, export.json's
    input record and deploy.py's reader are 8-bit RGB only so far."""
    fmt = unwrap(ens.models[0]).image_format
    if not fmt.rgb8:
        raise PipelineError(f"{files.run_dir(p.output_dir, p.experiment)}: its models take {fmt.describe()} images; "
                            "ONNX export (05_export.py, deploy.py) takes "
                            "8-bit RGB models only so far: predict with 03_predict.py instead")


def export(p: Params, folds: list[int] | None = None) -> Path:
    """Write export/model.onnx and export/export.json of the run (its full model, else its fold models, or
    ``folds``), with the TTA, threshold and post-processing 03_predict.py --images would use; returns the folder."""
    ens = load_fold_models(p, folds)
    check_rgb8(p, ens)
    mode, threshold, post, min_area, source = choose_tta_threshold(p, ens)
    data = onnx_bytes(ens, mode)
    out = export_dir(p)
    out.mkdir(parents=True, exist_ok=True)
    digest = onnx_digest(data)
    files.write_bytes_atomic(out / ONNX_NAME, data)
    files.write_json(out / JSON_NAME, record(p, ens, mode, threshold, post, source, digest, min_area))
    decided = ens.task.decision_text(threshold, post, min_area)
    print(f"exported {len(ens.models)} model(s), TTA {mode}, {decided} ({source}) "
          f"-> {out / ONNX_NAME} ({len(data) / 2**20:.1f} MiB, opset {OPSET}) and {out / JSON_NAME}")
    return out


def check(p: Params, n: int, folds: list[int] | None = None, tolerance: float = 1 / 255) -> tuple[float, float]:
    """Run the exported graph with onnxruntime and the run's torch models (lib.predict.predict_batch's probabilities,
    fp32) on ``n`` of the run's training images at the network size; print and return (max, mean) absolute
    difference; PipelineError when the max exceeds ``tolerance``."""
    from lib import deploy, layout
    from lib.cache import decode_net_image
    from lib.photos import read_image_bytes
    model = deploy.load(export_dir(p) / ONNX_NAME)
    ens = load_fold_models(p, folds)
    if [m["digest"] for m in ens.fingerprints] != [m["digest"] for m in model.record["models"]]:
        from params import rerun
        raise PipelineError(f"{model.path}: exported from other models than the run's now (retrained since?); "
                            f"export again: {rerun()}")
    paths = [path for _, path in sorted(layout.list_images(p.input_dir / files.TRAIN, []).items())][:n]
    h, w = ens.size
    images = np.stack([decode_net_image(read_image_bytes(path), path, h, w)[0] for path in paths]).transpose(0, 3, 1, 2)
    ours = model.probabilities(np.ascontiguousarray(images))
    with torch.no_grad():
        theirs = Averaged(ens, model.record["tta"]).to("cpu").float()(torch.from_numpy(images)).numpy()
    diff = np.abs(ours - theirs)
    worst, mean = float(diff.max()), float(diff.mean())
    print(f"--check on {len(images)} image(s): onnxruntime vs torch probabilities: max |diff| {worst:.2e}, "
          f"mean {mean:.2e} (tolerance {tolerance:.2e})")
    if worst > tolerance:
        raise PipelineError(f"{model.path}: onnxruntime differs from torch by up to {worst:.2e} (> {tolerance:.2e})")
    return worst, mean
