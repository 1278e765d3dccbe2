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
<submission>.manifest.json, comparison.md (out-of-fold Dice of each fold model and the fold ensemble; with
--baselines also of the baselines: average masks, or the majority class of each pixel for a multi-class task; with
--score also the local test Dice against input/test_masks, where there is one). A second 04 on
the experiment, or one while a 03 tunes or replaces the maps it reads, is refused at once, naming that process.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import params
from lib import baseline, files, folds, inputs, kagglecsv, scoring, submission, testmaps
from lib import cache as training_cache
from lib.errors import PipelineError, run_main
from lib.testmaps import Prediction
from lib.tuning import predict_command


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preds", nargs="+", metavar="DIR[:WEIGHT]",
                        help="prediction folders (each with tuning.json and test_probs/), optional weights; "
                             "default: output/<experiment>")
    parser.add_argument("--baselines", action="store_true",
                        help="also write baseline_global.csv.gz and baseline_view.csv.gz (average masks)")
    parser.add_argument("--score", action="store_true",
                        help="score every written submission against input/test_masks (demo data)")


def score_baselines(p: params.Params, pred: Prediction) -> tuple[dict, object]:
    """The baselines of the prediction folders' task (``Task.score_baselines``) scored out-of-fold from the
    full-resolution training truth, and what their test submissions are made from."""
    start = time.perf_counter()
    split = folds.read(p.output_dir)
    h, w = pred.size
    cache = training_cache.open_cache(p.input_dir, p.output_dir, list(split.id), h, w, p.workers, mode="off",
                                      mask_suffix=p.mask_suffix, task=pred.task, lock_timeout=p.lock_timeout)
    if cache.orig_size != pred.orig_size:
        raise PipelineError(f"{p.output_dir / 'cache'}: training images are {cache.orig_size or 'of mixed sizes'}, "
                            f"the predictions' {pred.orig_size or 'of mixed sizes'}; prediction and training data differ")
    results, made = pred.task.score_baselines(cache, split)
    print(f"baselines scored out-of-fold on {len(split)} images ({time.perf_counter() - start:.1f}s)")
    return results, made


def main(p: params.Params, pred_specs: list[str] | None, with_baselines: bool, score: bool) -> None:
    """submit() holding the experiment's submit lock (one 04 writing its files at a time; taken once the inputs are
    checked when the experiment folder does not exist yet) and a shared hold on every prediction folder's 03 lock
    (files.PREDICT_LOCK: 03 --shard jobs may go on writing maps, but no 03 that tunes or deletes maps runs meanwhile).
    A lock held otherwise refuses the run at once, before it writes anything."""
    run = files.run_dir(p.output_dir, p.experiment)
    specs = [testmaps.parse_pred_spec(s) for s in pred_specs or [str(run)]]
    with contextlib.ExitStack() as held:
        existed = run.is_dir()
        if existed:
            hold_submission(p, held)
        for folder in {f.resolve(): f for f, _ in specs if f.is_dir()}.values():  # a missing one: refused below
            held.enter_context(files.locked(folder / files.PREDICT_LOCK, f"prediction folder {folder.name}",
                                            shared=True))
        submit(p, specs, with_baselines, score, later=None if existed else held)


def hold_submission(p: params.Params, held: contextlib.ExitStack) -> None:
    """Hold the experiment's submit lock (files.SUBMIT_LOCK) until ``held`` closes."""
    held.enter_context(files.locked(files.run_dir(p.output_dir, p.experiment) / files.SUBMIT_LOCK,
                                    f"the submission of {p.experiment}"))


def submit(p: params.Params, specs: list[tuple], with_baselines: bool, score: bool,
           later: contextlib.ExitStack | None = None) -> None:
    """The submission and comparison of ``specs``; ``later``: where to hold the submit lock once the inputs are
    checked (a new experiment folder), None when it is held already. Every check and every computation that can fail
    comes first; then the files are written. The task of the folders decides the rows (``Task.submission_rows``) and
    the baselines."""
    run = files.run_dir(p.output_dir, p.experiment)
    preds = testmaps.load_predictions(specs)
    task = preds[0].task
    test_ids, keys, class_rows = task.submission_rows(p.input_dir)
    kagglecsv.check_order(p.input_dir / files.SAMPLE_SUBMISSION, p.rle_order)  # Kaggle's forms are column-major
    if score:
        scoring.truth_paths(p.input_dir, test_ids, p.mask_suffix)  # fail now, not after the work
    if later is not None:
        hold_submission(p, later)
    out = submission.submission_path(run, p.submission)
    test_dir = p.input_dir / files.TEST
    with_model = bool(test_ids) and (test_dir.is_dir() or any(pr.probs_dir.exists() for pr in preds))
    if with_model:
        testmaps.check(preds, test_ids)
    results, plans = {}, []
    if with_baselines:
        results, made = score_baselines(p, preds[0])
    elif with_model:  # the model is compared with them below (a second or so); the submission does not need them
        try:
            results, made = score_baselines(p, preds[0])
        except PipelineError as e:
            print(f"note: the model is not compared with the average-mask baselines ({e})")
    if with_baselines:
        sizes = inputs.test_sizes(p.input_dir, test_ids, inputs.test_files(p.input_dir), preds[0].orig_size)
        plans = task.plan_baselines(run, made, results, test_ids, keys, class_rows, sizes, p.rle_order)
    written, manifest = {}, None  # from here on, files are written
    if with_model:
        manifest = submission.make_submission(out, preds, test_ids, p.input_dir / files.SAMPLE_SUBMISSION,
                                              p.threshold, p.workers, test_dir=test_dir if test_dir.is_dir() else None,
                                              keys=keys, test_names=inputs.test_files(p.input_dir),
                                              rle_order=p.rle_order, class_rows=class_rows, post=p.postprocess,
                                              checked=True,
                                              repairs=[predict_command(pr.folder, run=run) for pr in preds])
        decided = task.decision_text(manifest.get("label_thresholds", manifest["threshold"]), "none",
                                     manifest.get("label_min_areas", 0.0))
        post = (f", keeping each mask's largest region ({manifest['postprocess_source']})"
                if manifest["postprocess"] != "none" else "")
        post += (f", emptying masks under {manifest['min_area']:.2%} of the image ({manifest['min_area_source']})"
                 if manifest["min_area"] else "")
        print(f"wrote {out}: {manifest['rows']} rows, {decided} ({manifest['threshold_source']}){post}, "
              f"{manifest['seconds']:.1f}s, {manifest['images_per_s']} images/s")
        written[out.name] = out
    else:
        print(f"note: no {test_dir} folder and no test maps (or no test images): no model submission"
              + (", comparison and baselines only" if with_baselines else ", comparison only"))
    for plan in plans:
        made = baseline.write_baseline_submission(plan, p.input_dir / files.SAMPLE_SUBMISSION)
        extra = (f"; {made['images_without_a_view']} test image(s) with no view of the training masks got the global "
                 "average") if made.get("images_without_a_view") else ""
        decided = f"threshold {made['threshold']:.3f}" if task.uses_threshold else made["threshold_source"]
        print(f"wrote {plan.path} ({decided}{extra})")
        written[plan.path.name] = plan.path
    scores = task.score_submissions(list(written.values()), p.input_dir, keys, class_rows, p.mask_suffix,
                                    p.rle_order) if score and written else {}
    for path, (dice, per_class) in scores.items():
        print(f"test Dice of {path.name}: {dice:.5f}"
              + (" (" + ", ".join(f"{c} {d:.4f}" for c, d in per_class.items()) + ")" if per_class else ""))
    trivial = max(results.values(), key=lambda b: b.oof_dice, default=None)
    if manifest is not None and manifest["oof_dice"] is not None and trivial is not None \
            and manifest["oof_dice"] < trivial.oof_dice:
        print(f"warning: the model's out-of-fold Dice {manifest['oof_dice']:.5f} is below the trivial "
              f"baseline's ({baseline.TITLES[trivial.name]}) {trivial.oof_dice:.5f}: train longer or check the data "
              f"(the submission is written all the same)")
    if not with_baselines:
        results = {}
    table = baseline.comparison_table(results, preds, manifest, {path.name: d for path, (d, _) in scores.items()},
                                      scoring.truth_folder(p.input_dir), {f.name: c for f, (_, c) in scores.items()})
    files.write_text_atomic(run / files.COMPARISON, table)
    params.save(p, run / files.SUBMIT_PARAMS)  # what made the files above (a refused run writes nothing)
    print("\n" + table + f"\n(saved to {run / files.COMPARISON})")


if __name__ == "__main__":
    p, args = params.parse(__doc__, extra=add_args, script="04_submit.py")
    run_main(lambda: main(p, args.preds, args.baselines, args.score))
