"""Masks for photos from an exported run (05_export.py) with onnxruntime: no PyTorch needed.

    python deploy.py output/demo/export/model.onnx --images photos/ a.jpg --images-out masks/

Writes <name>_mask.png, <name>_overlay.jpg and masks.csv as 03_predict.py --images does, with the TTA, threshold and
post-processing recorded in export.json beside the graph. A photo that cannot be read is skipped with a line (the run
fails only when none can be); a file in --images-out that neither deploy.py nor 03_predict.py --images wrote is never
replaced unless --overwrite (lib/photos.py). Needs only numpy, opencv-python-headless and onnxruntime (and this
repository's lib/).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lib.errors import run_main
from lib.invocation import suggested


def main(args: argparse.Namespace, argv: list[str]) -> None:
    from lib import deploy, photos
    model = deploy.load(args.model, args.providers.split(","))
    paths = photos.photo_paths(args.images)
    out = args.images_out or args.model.parent / "images"
    again = suggested(Path(__file__).name, [*argv, *([] if args.overwrite else ["--overwrite"])])
    start = time.perf_counter()
    done, skipped = deploy.predict_photos(model, paths, out, args.batch_size, args.rle_order, args.overwrite, again)
    decided = model.task.decision_text(deploy.decision_value(model.record["threshold"]), model.record["postprocess"],
                                       deploy.decision_value(model.record.get("min_area", 0.0)))
    print(f"wrote {len(done)} masks, overlays and {out / photos.MASKS_CSV} in {time.perf_counter() - start:.1f}s "
          f"(TTA {model.record['tta']}, {decided})")
    if skipped:
        print(skipped.summary(len(paths)))


if __name__ == "__main__":
    from lib.invocation import usage  # the standard library only: no params, no PyTorch
    parser = argparse.ArgumentParser(description=usage(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model.onnx written by 05_export.py (export.json beside it)")
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="photos, folders of photos and globs")
    parser.add_argument("--images-out", type=Path, metavar="DIR", help="where masks go (default: beside the model)")
    parser.add_argument("--batch-size", type=int, default=8, help="photos per onnxruntime call")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --images-out that neither deploy.py nor 03_predict.py --images wrote")
    parser.add_argument("--rle-order", choices=("row", "column"), default="row", help="RLE pixel order (as 04)")
    parser.add_argument("--providers", default="CPUExecutionProvider",
                        help="onnxruntime execution providers, comma-separated (e.g. CUDAExecutionProvider,"
                             "CPUExecutionProvider)")
    run_main(lambda: main(parser.parse_args(), sys.argv[1:]))
