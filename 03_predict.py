"""Tune TTA and threshold on out-of-fold predictions, then predict the test set with the fold ensemble.

    python 03_predict.py --preset demo                  # tune, then every test image in sample_submission.csv
    python 03_predict.py --preset demo --tta hflip      # force a TTA mode (default: the best out-of-fold)
    python 03_predict.py --preset demo --images a.jpg b.jpg   # masks + overlays for single photos
    python 03_predict.py --folds 0                      # only the folds trained so far (tuned on their images)
    torchrun --standalone --nproc_per_node 4 03_predict.py   # test images shared out over 4 processes (GPUs)
    python 03_predict.py --tune-only; python 03_predict.py --shard K/N    # N separate jobs (machines, array job)

Writes output/<experiment>/tuning.json (chosen TTA, threshold, score table) and
output/<experiment>/test_probs/<id>.png (uint8 probability maps at the network size).
A re-run reuses a tuning made with the same models and skips test maps already written. Shards take every N-th
batch of the single-process order, so the maps are the same bytes whatever N; each shard resumes on its own, and
04_submit.py refuses while any map is missing. Under torchrun rank 0 tunes while the others wait; separate
--shard jobs need the tuning first (--tune-only, once).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import params
from lib import files, inputs, overlay, predict, submission
from lib.errors import PipelineError, run_main
from lib.runtime import Dist, shard_of


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", nargs="+", type=Path, help="predict these photos only (mask + overlay)")
    parser.add_argument("--folds", type=fold_list, metavar="K[,K...]",
                        help="ensemble only these fold models (default: every fold of the split)")
    parser.add_argument("--retune", action="store_true", help="tune again even if tuning.json matches the models")
    parser.add_argument("--replace", action="store_true",
                        help="delete test maps made by other models or settings instead of refusing")
    parser.add_argument("--tune-only", action="store_true",
                        help="tune and prepare the test map folder, predict nothing (before --shard jobs)")
    parser.add_argument("--shard", metavar="K/N", help="predict shard K of N (0 <= K < N) of the test batches")


def fold_list(text: str) -> list[int]:
    """'0,2' -> [0, 2] (argparse type of --folds)."""
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers") from None
    if min(ks) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: fold numbers are >= 0")
    return ks


def current_tuning(p: params.Params, ens: predict.Ensemble) -> dict | None:
    """tuning.json if it is sound and was made for these models and --tta, else None (then it is made again)."""
    run = files.run_dir(p.output_dir, p.experiment)
    if not (run / files.TUNING).exists():
        return None
    try:
        old = submission.read_tuning(run)
    except PipelineError as e:
        print(f"note: tuning again: {e}")
        return None
    return old if old.get("models") == ens.fingerprints and old.get("tta_asked") == p.tta else None


def tuning_for(p: params.Params, ens: predict.Ensemble, retune: bool) -> dict:
    path = files.run_dir(p.output_dir, p.experiment) / files.TUNING
    old = None if retune else current_tuning(p, ens)
    if old is not None:
        print(f"tuning: reusing {path}")
        return old
    tuning = predict.tune(p, ens)
    files.write_json(path, tuning)
    for row in tuning["scores"]:
        print(f"  {row['name']:<24} TTA {row['tta']:<6} threshold {row['threshold']:.3f}  OOF Dice {row['dice']:.5f}")
    print(f"tuning: TTA {tuning['tta']}, threshold {tuning['threshold']:.3f}, out-of-fold Dice "
          f"{tuning['oof_dice']:.5f} over {tuning['n_images']} images -> {path}")
    return tuning


def test_dir_for(p: params.Params, tuning: dict, replace: bool) -> Path:
    """The test map folder; refuses (or with --replace clears) maps made by other models/settings."""
    out = files.run_dir(p.output_dir, p.experiment) / files.TEST_PROBS
    made_by = files.probs_made_by(tuning)
    meta = out / files.PROBS_META
    foreign = (files.read_json(meta, "03_predict.py") != made_by if meta.exists()
               else out.is_dir() and any(out.glob("*.png")))  # maps without meta.json: not written here
    if foreign:
        if not replace:
            raise PipelineError(f"{out}: holds maps from other models or settings; add --replace to delete them "
                                "and predict again, or use another --experiment")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not meta.exists() or foreign:  # every shard may get here: the same content, written once
        files.write_json(meta, made_by)
    return out


def predict_images(p: params.Params, ens: predict.Ensemble, images: list[Path]) -> None:
    tuning = submission.read_tuning(files.run_dir(p.output_dir, p.experiment))
    mode = tuning["tta"] if p.tta == "auto" else p.tta
    threshold = p.threshold or tuning["threshold"]
    out = files.run_dir(p.output_dir, p.experiment) / "images"
    for path in images:
        mask_path, overlay_path = overlay.predict_image(ens, path, mode, threshold, out)
        print(f"{path}: mask {mask_path}, overlay {overlay_path}")


def main(p: params.Params, args: argparse.Namespace) -> None:
    dist = Dist.start(p.device)
    try:
        predict_all(p, args, dist)
    finally:
        dist.close()


def predict_all(p: params.Params, args: argparse.Namespace, dist: Dist) -> None:
    shard = shard_of(args.shard, dist)
    separate = args.shard is not None  # one of N separate jobs: tuning and map folder come from --tune-only
    if (args.images or args.replace or args.retune) and (dist.active or separate):
        raise PipelineError("--images, --replace and --retune run in one process: use them without torchrun and "
                            "--shard (e.g. with --tune-only before the shards)")
    ens = predict.load_ensemble(p, args.folds, dist.local_rank)
    if args.images:
        return predict_images(p, ens, args.images)
    has_test = (p.input_dir / files.TEST).is_dir()
    ids, paths = inputs.check_test(p.input_dir) if has_test else ([], {})  # refuse before writing anything
    tuning = tuning_for(p, ens, args.retune) if dist.main and not separate else None
    if dist.main and not separate:
        params.save(p, files.run_dir(p.output_dir, p.experiment) / files.PREDICT_PARAMS)
    dist.barrier()  # the other ranks wait for rank 0's tuning
    tuning = tuning or current_tuning(p, ens)
    if tuning is None:
        raise PipelineError(f"{files.run_dir(p.output_dir, p.experiment) / files.TUNING}: missing or made for other "
                            "models; run `python 03_predict.py --tune-only` with the same settings first")
    if not has_test:
        return print(f"note: no {p.input_dir / files.TEST} folder: tuned only, no test maps "
                     "(04_submit.py can still compare with the baselines)")
    out = test_dir_for(p, tuning, args.replace) if dist.main else None
    dist.barrier()
    out = out or test_dir_for(p, tuning, False)
    if args.tune_only:
        return print(f"tuned; test maps go to {out}: predict them with 03_predict.py, torchrun or --shard K/N")
    stats = predict.predict_test(p, ens, tuning["tta"], ids, paths, out, shard)
    predicted, seconds = dist.sum(stats["predicted"], stats.get("seconds", 0.0))
    if dist.main:
        what = f"shard {shard[0]}/{shard[1]} done, {stats['maps']} of the {len(ids)}" if separate else f"{len(ids)}"
        speed = f" ({int(predicted)} predicted, {predicted / seconds:.1f} images/s" if predicted else ""
        print(f"test maps: {what} in {out}" + (speed + (" per process)" if dist.active else ")") if speed else ""))


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args)
    run_main(lambda: main(p, args))
