"""Export a finished run to ONNX: its full model (else its fold models) with the tuned TTA, for predicting without PyTorch.

    python 05_export.py --preset demo                 # output/<experiment>/export/model.onnx and export.json
    python 05_export.py --preset demo --check 8       # then compare onnxruntime with torch on 8 training images
    python deploy.py output/demo/export/model.onnx --images photos/   # masks with onnxruntime only

The graph takes uint8 (N, 3, H, W) RGB at the network size (dynamic N) and returns the mean probabilities over the
models and the TTA; export.json holds the sizes, normalisation, threshold, post-processing, classes and digests.
"""
from __future__ import annotations

import argparse

import params
from lib.errors import run_main


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--folds", type=params.fold_list, metavar="K[,K...]",
                        help="export these fold models (default: the full model, else every fold model)")
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="after exporting, compare onnxruntime with torch on N training images (max, mean diff)")


def main(p: params.Params, args: argparse.Namespace) -> None:
    from lib import export
    export.export(p, args.folds)
    if args.check:
        export.check(p, args.check, args.folds)


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args, script="05_export.py")
    run_main(lambda: main(p, args))
