"""Write the test submission from 03_predict.py's maps, and compare the models with average-mask baselines.

    python 04_submit.py                                  # output/<experiment>/submission.csv.gz + manifest
    python 04_submit.py --preset demo --baselines --score
                                                         # + baseline_global/baseline_view.csv.gz, local test Dice
    python 04_submit.py --preds output/unet_a:2 output/unet_b:1 --submission blend
                                                         # weighted ensemble of two runs (weights 2/3, 1/3)
    python 04_submit.py --threshold 0.45 --submission fixed045 --workers 8

The test images are those of sample_submission.csv, or without one every image in input/test/ (sorted by id, each
row keyed by its file name). Every one must have its PNG in every prediction folder (else nothing is written); each
mask is encoded at its image's own size, in --rle-order. The threshold is --threshold when given, else the tuned one
(an ensemble: the weighted mean of the folders' tuned thresholds). Writes, in output/<experiment>/: <submission>.csv.gz and
<submission>.manifest.json, comparison.md (out-of-fold Dice of the baselines, each fold model and the
fold ensemble; with --score also the local test Dice against input/test_masks, where there is one).
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

import params
from lib import baseline, files, folds, inputs, submission
from lib import cache as training_cache
from lib.errors import PipelineError, run_main


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preds", nargs="+", metavar="DIR[:WEIGHT]",
                        help="prediction folders (each with tuning.json and test_probs/), optional weights; "
                             "default: output/<experiment>")
    parser.add_argument("--baselines", action="store_true",
                        help="also write baseline_global.csv.gz and baseline_view.csv.gz (average masks)")
    parser.add_argument("--score", action="store_true",
                        help="score every written submission against input/test_masks (demo data)")


def write_baselines(p: params.Params, results: dict, total: baseline.MaskSums, ids: list[str], keys: list[str],
                    common: tuple[int, int] | None) -> dict:
    """Baseline test submissions in the run folder; returns {file name: path}."""
    written = {}
    sizes = inputs.test_sizes(p.input_dir, ids, inputs.test_files(p.input_dir), common)
    for name, result in results.items():
        path = submission.submission_path(files.run_dir(p.output_dir, p.experiment), f"baseline_{name}")
        baseline.write_baseline_submission(path, total, result, ids, p.input_dir / files.SAMPLE_SUBMISSION, sizes,
                                           keys, p.rle_order)
        print(f"wrote {path} (threshold {result.threshold:.3f})")
        written[path.name] = path
    return written


def score_baselines(p: params.Params, split: pd.DataFrame, pred: submission.Prediction
                    ) -> tuple[dict, baseline.MaskSums]:
    """Out-of-fold scores of the average-mask baselines, from the full-resolution training truth."""
    start = time.perf_counter()
    h, w = pred.size
    cache = training_cache.open_cache(p.input_dir, p.output_dir, list(split.id), h, w, p.workers, mode="off",
                                      mask_suffix=p.mask_suffix)
    if cache.orig_size != pred.orig_size:
        raise PipelineError(f"{p.output_dir / 'cache'}: training images are {cache.orig_size or 'of mixed sizes'}, "
                            f"the predictions' {pred.orig_size or 'of mixed sizes'}; prediction and training data differ")
    results, total = baseline.oof_baselines(cache, split)
    print(f"baselines scored out-of-fold on {len(split)} images ({time.perf_counter() - start:.1f}s)")
    return results, total


def main(p: params.Params, pred_specs: list[str] | None, with_baselines: bool, score: bool) -> None:
    run = files.run_dir(p.output_dir, p.experiment)
    preds = submission.load_predictions([submission.parse_pred_spec(s) for s in pred_specs or [str(run)]])
    if not preds[0].task.binary:
        return main_classes(p, run, preds, with_baselines, score)
    test_ids, keys = inputs.test_rows(p.input_dir)
    split = folds.read(p.output_dir)
    if score:
        submission.truth_paths(p.input_dir, test_ids, p.mask_suffix)  # fail now, not after the work
    out = submission.submission_path(run, p.submission)
    written, manifest = {}, None
    if test_ids and ((p.input_dir / files.TEST).is_dir() or any(pr.probs_dir.exists() for pr in preds)):
        test_dir = p.input_dir / files.TEST
        manifest = submission.make_submission(out, preds, test_ids, p.input_dir / files.SAMPLE_SUBMISSION,
                                              p.threshold, p.workers, test_dir=test_dir if test_dir.is_dir() else None,
                                              keys=keys, test_names=inputs.test_files(p.input_dir),
                                              rle_order=p.rle_order, post=p.postprocess,
                                              repairs=[submission.predict_command(pr.folder, run) for pr in preds])
        post = (f", keeping each mask's largest region ({manifest['postprocess_source']})"
                if manifest["postprocess"] != "none" else "")
        print(f"wrote {out}: {manifest['rows']} rows, threshold {manifest['threshold']:.3f} "
              f"({manifest['threshold_source']}){post}, {manifest['seconds']:.1f}s, {manifest['images_per_s']} images/s")
        written[out.name] = out
    else:
        print(f"note: no {p.input_dir / files.TEST} folder and no test maps (or no test images): no model submission, "
              "comparison and baselines only")

    results, total = score_baselines(p, split, preds[0])
    if with_baselines and test_ids:
        written |= write_baselines(p, results, total, test_ids, keys, preds[0].orig_size)
    scores = submission.score_submissions(list(written.values()), p.input_dir, p.mask_suffix,
                                          p.rle_order) if score and written else {}
    test_dice = {path.name: dice for path, dice in scores.items()}
    table = baseline.comparison_table(results, preds, manifest, test_dice)
    files.write_text_atomic(run / files.COMPARISON, table)
    params.save(p, run / files.SUBMIT_PARAMS)  # what made the files above (a refused run writes nothing)
    print("\n" + table + f"\n(saved to {run / files.COMPARISON})")


def main_classes(p: params.Params, run, preds: list, with_baselines: bool, score: bool) -> None:
    """04 for a multi-class task: one row per test image and class 1..C-1, the majority-class baseline, Dice per
    class."""
    task = preds[0].task
    test_ids, keys, class_rows = inputs.test_class_rows(p.input_dir, task)
    split = folds.read(p.output_dir)
    if score:
        submission.truth_paths(p.input_dir, test_ids, p.mask_suffix)  # fail now, not after the work
    out = submission.submission_path(run, p.submission)
    written, manifest = {}, None
    if test_ids:
        test_dir = p.input_dir / files.TEST
        manifest = submission.make_submission(out, preds, test_ids, p.input_dir / files.SAMPLE_SUBMISSION, 0.0,
                                              p.workers, test_dir=test_dir if test_dir.is_dir() else None,
                                              keys=keys, test_names=inputs.test_files(p.input_dir),
                                              rle_order=p.rle_order, class_rows=class_rows,
                                              repairs=[submission.predict_command(pr.folder, run) for pr in preds])
        print(f"wrote {out}: {manifest['rows']} rows ({len(test_ids)} images x {len(task.scored)} classes), "
              f"{manifest['seconds']:.1f}s")
        written[out.name] = out
    h, w = preds[0].size
    cache = training_cache.open_cache(p.input_dir, p.output_dir, list(split.id), h, w, p.workers, mode="off",
                                      mask_suffix=p.mask_suffix, task=task)
    start = time.perf_counter()
    result, counts = baseline.oof_majority(cache, split, task)
    print(f"baseline scored out-of-fold on {len(split)} images ({time.perf_counter() - start:.1f}s)")
    if with_baselines and test_ids:
        path = submission.submission_path(run, "baseline_majority")
        sizes = dict(zip(test_ids, inputs.test_sizes(p.input_dir, test_ids, inputs.test_files(p.input_dir),
                                                      cache.orig_size)))
        baseline.write_majority_submission(path, counts, result, task, keys, class_rows, sizes,
                                           p.input_dir / files.SAMPLE_SUBMISSION, p.rle_order)
        print(f"wrote {path}")
        written[path.name] = path
    scores = submission.score_class_submissions(list(written.values()), p.input_dir, task,
                                                dict(zip(keys, class_rows)), p.mask_suffix,
                                                p.rle_order) if score and written else {}
    for path, (dice, per_class) in scores.items():
        print(f"test Dice of {path.name}: {dice:.5f} (" + ", ".join(f"{c} {d:.4f}" for c, d in per_class.items()) + ")")
    table = baseline.comparison_table({"majority": result}, preds, manifest,
                                      {path.name: d for path, (d, _) in scores.items()})
    files.write_text_atomic(run / files.COMPARISON, table)
    params.save(p, run / files.SUBMIT_PARAMS)
    print("\n" + table + f"\n(saved to {run / files.COMPARISON})")


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args, script="04_submit.py")
    run_main(lambda: main(p, args.preds, args.baselines, args.score))
