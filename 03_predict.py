"""Tune TTA and threshold on out-of-fold predictions, then predict the test set with the fold ensemble.

    python 03_predict.py --preset demo                  # tune, then every test image in sample_submission.csv
    python 03_predict.py --preset demo --tta hflip      # force a TTA mode (default: the best out-of-fold)
    python 03_predict.py --preset demo --images a.jpg b.jpg   # masks + overlays for single photos
    python 03_predict.py --folds 0                      # only the folds trained so far (tuned on their images)

Writes output/<experiment>/tuning.json (chosen TTA, threshold, score table) and
output/<experiment>/test_probs/<id>.png (uint8 probability maps at the network size).
A re-run reuses a tuning made with the same models and skips test maps already written.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import params
from lib import files, inputs, overlay, predict
from lib.errors import PipelineError, run_main


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", nargs="+", type=Path, help="predict these photos only (mask + overlay)")
    parser.add_argument("--folds", type=fold_list, metavar="K[,K...]",
                        help="ensemble only these fold models (default: every fold of the split)")
    parser.add_argument("--retune", action="store_true", help="tune again even if tuning.json matches the models")
    parser.add_argument("--replace", action="store_true",
                        help="delete test maps made by other models or settings instead of refusing")


def fold_list(text: str) -> list[int]:
    """'0,2' -> [0, 2] (argparse type of --folds)."""
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers") from None
    if min(ks) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: fold numbers are >= 0")
    return ks


def tuning_for(p: params.Params, ens: predict.Ensemble, retune: bool) -> dict:
    path = files.run_dir(p.output_dir, p.experiment) / files.TUNING
    if path.exists() and not retune:
        old = files.read_json(path, "03_predict.py")
        if old.get("models") == ens.fingerprints and old.get("tta_asked") == p.tta:
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
    files.write_json(meta, made_by)
    return out


def main(p: params.Params, args: argparse.Namespace) -> None:
    ens = predict.load_ensemble(p, args.folds)
    params.save(p, files.run_dir(p.output_dir, p.experiment) / files.PREDICT_PARAMS)
    if args.images:
        tuning_path = files.run_dir(p.output_dir, p.experiment) / files.TUNING
        tuning = files.read_json(tuning_path, "03_predict.py (without --images)")
        mode = tuning["tta"] if p.tta == "auto" else p.tta
        threshold = p.threshold or tuning["threshold"]
        out = files.run_dir(p.output_dir, p.experiment) / "images"
        for path in args.images:
            mask_path, overlay_path = overlay.predict_image(ens, path, mode, threshold, out)
            print(f"{path}: mask {mask_path}, overlay {overlay_path}")
        return
    tuning = tuning_for(p, ens, args.retune)
    if not (p.input_dir / files.TEST).is_dir():
        print(f"note: no {p.input_dir / files.TEST} folder: tuned only, no test maps "
              "(04_submit.py can still compare with the baselines)")
        return
    ids, paths = inputs.check_test(p.input_dir)
    out = test_dir_for(p, tuning, args.replace)
    stats = predict.predict_test(p, ens, tuning["tta"], ids, paths, out)
    print(f"test maps: {len(ids)} in {out}" + (f" ({stats['predicted']} predicted at "
                                               f"{stats['images_per_s']:.1f} images/s)" if stats["predicted"] else ""))


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args)
    run_main(lambda: main(p, args))
