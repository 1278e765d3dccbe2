"""Masks for photos from an exported run (05_export.py) with onnxruntime: no PyTorch needed.

    python deploy.py output/demo/export/model.onnx --images photos/ a.jpg --images-out masks/

Writes <name>_mask.png, <name>_overlay.jpg and masks.csv as 03_predict.py --images does, with the TTA, threshold and
post-processing recorded in export.json beside the graph. Needs only numpy, opencv-python-headless and onnxruntime
(and this repository's lib/).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from lib.errors import PipelineError, run_main


def photos(sources: list[str]) -> list[Path]:
    """Files and folders (their photos, sorted) -> photo paths in that order, each once."""
    from lib.layout import PHOTO_EXTS, files_in
    out: list[Path] = []
    for source in map(Path, sources):
        if not source.exists():
            raise PipelineError(f"{source}: no such file or folder (--images takes photos and folders)")
        found = files_in(source, PHOTO_EXTS) if source.is_dir() else [source]
        out += [p for p in found if p not in out]
    return out


def main(args: argparse.Namespace) -> None:
    from lib import deploy
    model = deploy.load(args.model, args.providers.split(","))
    paths = photos(args.images)
    out = args.images_out or args.model.parent / "images"
    start = time.perf_counter()
    deploy.predict_photos(model, paths, out, args.batch_size, args.rle_order)
    print(f"wrote {len(paths)} masks, overlays and {out / deploy.MASKS_CSV} in {time.perf_counter() - start:.1f}s "
          f"(TTA {model.record['tta']}, {model.task.decision_text(model.record['threshold'], model.record['postprocess'])})")


if __name__ == "__main__":
    from lib.invocation import usage  # the standard library only: no params, no PyTorch
    parser = argparse.ArgumentParser(description=usage(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model.onnx written by 05_export.py (export.json beside it)")
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="photos and folders of photos")
    parser.add_argument("--images-out", type=Path, metavar="DIR", help="where masks go (default: beside the model)")
    parser.add_argument("--batch-size", type=int, default=8, help="photos per onnxruntime call")
    parser.add_argument("--rle-order", choices=("row", "column"), default="row", help="RLE pixel order (as 04)")
    parser.add_argument("--providers", default="CPUExecutionProvider",
                        help="onnxruntime execution providers, comma-separated (e.g. CUDAExecutionProvider,"
                             "CPUExecutionProvider)")
    run_main(lambda: main(parser.parse_args()))
