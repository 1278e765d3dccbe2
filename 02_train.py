"""Train one fold (or all) of the car-grouped K-fold UNet, in one process or several (torchrun).

    python 02_train.py --fold 0                        # full-resolution GPU defaults
    python 02_train.py --fold all --preset demo        # every fold, one after another
    python 02_train.py --fold all --preset cpu --jobs 2  # two folds at a time, one process (core) each
    python 02_train.py --fold full --preset cpu        # one model on every training image, for the submission
    python 02_train.py --fold 0 --preset demo --resume # continue an interrupted run
    python 02_train.py --fold 0 --preset demo --restart    # train it again from the start
    python 02_train.py --fold all --tile-size 512 --downscale 2   # large images: random tiles (01 with the same flags)
    CUDA_VISIBLE_DEVICES=1 python 02_train.py --fold 1 # folds side by side, one process per GPU
    torchrun --standalone --nproc_per_node 4 02_train.py --fold 0      # one fold on 4 GPUs (DDP)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 02_train.py --fold 0

Under torchrun --batch-size is the global batch (split over the processes), so N processes follow the schedule
of one; --sync-bn computes BatchNorm statistics over the global batch. Only rank 0 writes and prints.

Writes output/<experiment>/fold<k>/: model.pt (best val Dice), last.pt (resumable), log.csv,
curve.png, oof.npz (out-of-fold uint8 probabilities of the best model), params.json.
"""
from __future__ import annotations

import argparse
import os
import sys

import params
from lib.errors import PipelineError, run_main


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fold", required=True,
                        help="fold number; 'all' (every fold); or 'full': one model fitted on every training image "
                             "(no validation: it trains --full-epochs epochs, or --epochs), which 03 then predicts the test set with")
    parser.add_argument("--resume", action="store_true", help="continue from last.pt")
    parser.add_argument("--restart", action="store_true",
                        help="train the fold(s) again from the start, deleting their earlier files")


def main(p: params.Params, fold: str, resume: bool, restart: bool = False) -> None:
    from lib import folds, pseudo  # torch and pandas are imported here, after the command line: --help stays fast
    from lib.runtime import Dist
    from lib.train import train_fold
    if fold == "all":
        ks = range(folds.n_folds_of(folds.read(p.output_dir)))
    elif fold.isdigit():
        ks = [int(fold)]
    elif fold == "full":
        ks = [fold]
        p = params.full_model(p)
    else:
        raise PipelineError(f"--fold {fold!r}: give a fold number, 'all' or 'full'")
    if p.jobs > 1 and len(ks) > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # torchrun: ranks share each fold
        from lib.jobs import train_side_by_side
        train_side_by_side(sys.argv[0], sys.argv[1:], list(ks), p.jobs)
        return
    dist = Dist.start(p.device)
    try:
        results = [train_fold(p, k, dist, resume, restart) for k in ks]
    finally:
        dist.close()
    if dist.main:
        for r in results:
            if r["fold"] == "full":
                also = (f", the last {r['pseudo_epochs']} also on the {r['labelled']} test images it labelled"
                        f"{pseudo.sample_note(p, r['labelled'])}"
                        if r["labelled"] else "")
                print(f"full: trained on every training image for {r['epochs']} epochs{also} (no validation images; "
                      "03_predict.py predicts the test set with it)")
            else:
                print(f"fold {r['fold']}: best val Dice {r['best_val_dice']:.5f} after {r['epochs']} epochs")


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args, script="02_train.py")
    run_main(lambda: main(p, args.fold, args.resume, args.restart))
