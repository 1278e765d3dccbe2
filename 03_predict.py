"""Tune TTA and threshold on out-of-fold predictions, then predict the test set with the fold ensemble.

    python 03_predict.py --preset demo                  # tune, then every test image in sample_submission.csv
    python 03_predict.py --preset demo --tta hflip      # force a TTA mode (default: the best out-of-fold)
    python 03_predict.py --preset demo --input input/demo --output output/demo --images photos/ a.jpg 'b*.png' \\
        'trip/**/*.jpg' --images-out masks/    # any photos, with the models of make demo
    python 03_predict.py --folds 0                      # only the folds trained so far (tuned on their images)
    torchrun --standalone --nproc_per_node 4 03_predict.py   # test images shared out over 4 processes (GPUs)
    python 03_predict.py --tune-only; python 03_predict.py --shard K/N    # N separate jobs (machines, array job)

Writes output/<experiment>/tuning.json (chosen TTA, threshold, score table),
output/<experiment>/test_probs/<id>.png (uint8 probability maps at the network size; with --tile-size by
sliding window, each at its image's own size shrunk by --downscale) and
output/<experiment>/overlays/*.jpg (the worst and best out-of-fold predictions and a few test ones on their photos).
A re-run reuses a tuning made with the same models and skips test maps already written. Shards take every N-th
batch of the single-process order, so the maps are the same bytes whatever N; each shard resumes on its own, and
04_submit.py refuses while any map is missing. Under torchrun rank 0 tunes while the others wait; separate
--shard jobs need the tuning first (--tune-only, once). One run at a time writes an experiment's tuning and maps
(the --shard jobs of one tuning together): another is refused at once, naming the process that holds them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import params
from lib.errors import run_main


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", nargs="+", metavar="PATH",
                        help="predict these photos only: files, folders or globs (needs only the fold models; the "
                             "tuned threshold and TTA when tuning.json exists, else --threshold or 0.5)")
    parser.add_argument("--images-out", type=Path, metavar="DIR",
                        help="where --images writes <name>_mask.png, <name>_overlay.jpg and masks.csv "
                             "(default output/<experiment>/images)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --images: replace files in --images-out that 03 did not write (refused otherwise)")
    parser.add_argument("--folds", type=params.fold_list, metavar="K[,K...]",
                        help="ensemble only these fold models (default: every fold of the split)")
    parser.add_argument("--retune", action="store_true", help="tune again even if tuning.json matches the models")
    parser.add_argument("--replace", action="store_true",
                        help="delete test maps made by other models or settings instead of refusing")
    parser.add_argument("--tune-only", action="store_true",
                        help="tune and prepare the test map folder, predict nothing (before --shard jobs)")
    parser.add_argument("--shard", metavar="K/N", help="predict shard K of N (0 <= K < N) of the test batches")


def main(p: params.Params, args: argparse.Namespace) -> None:
    if args.images:  # torch is imported here, after the command line: --help stays fast
        from lib.overlay import predict_photos
        predict_photos(p, args.images, args.images_out, args.folds, args.overwrite)
    else:
        from lib.predict import run
        run(p, args.folds, args.retune, args.replace, args.tune_only, args.shard)


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args, script="03_predict.py")
    run_main(lambda: main(p, args))
