"""What the stages write, and where: names that stay inside --output, outputs that never share a name, CSV quoted as
CSV requires, no file replaced that the project did not write, every check before the first write, thresholds that
keep what is above them, and images too large to decode whole refused in one line (docs/RELIABILITY.md, "Outputs").
"""
from __future__ import annotations

import csv
import gzip
import json
import shlex
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import run_script
from lib import files, rle
from lib.errors import PipelineError
from test_failures import EXPERIMENT, FLAGS, clone, digest, error_line, load_script  # noqa: F401


def args_for(t, out: Path, *extra) -> list:
    return ["--input", t.root, "--output", out, *FLAGS, *extra]


def commands_in(line: str) -> list[list[str]]:
    """The commands a message names in backticks, as argument lists."""
    return [shlex.split(c) for c in line.split("`")[1::2]]


def run_named(cmd: list[str]):
    """Run a command a message named, as printed (its python, its script), from the repository root."""
    assert cmd[0].endswith("python") and cmd[1].endswith(".py"), cmd
    return run_script(Path(cmd[1]).name, *cmd[2:])


# --- names that become paths stay inside --output ---
@pytest.mark.parametrize("flag, value", [
    ("--experiment", "/tmp/elsewhere_abs"), ("--experiment", "../x"), ("--experiment", "a/b"), ("--experiment", ".."),
    ("--experiment", "cache"), ("--submission", "../../sub"), ("--submission", "/tmp/sub"),
    ("--submission", "baseline_global"), ("--submission", "baseline_view"), ("--submission", "s.csv"),
])
def test_names_that_would_leave_output_or_share_a_file_are_refused_before_anything_is_written(tmp_path, flag, value):
    out = tmp_path / "out"
    for script, extra in (("02_train.py", ["--fold", "0"]), ("03_predict.py", []), ("04_submit.py", ["--baselines"])):
        proc = run_script(script, *extra, "--input", tmp_path / "none", "--output", out, flag, value, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(f"error: {flag} {value!r}"), proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not out.exists() and not Path("/tmp/elsewhere_abs").exists() and not (tmp_path / "x").exists()


def test_a_submission_named_like_a_baseline_cannot_overwrite_it_and_the_comparison_credits_each_file(trained,
                                                                                                    tmp_path):
    out = clone(trained, tmp_path)
    run_script("03_predict.py", *args_for(trained, out))
    run_script("04_submit.py", *args_for(trained, out, "--baselines", "--score"))
    run = files.run_dir(out, EXPERIMENT)
    before = digest(run)
    proc = run_script("04_submit.py", *args_for(trained, out, "--baselines", "--submission", "baseline_global"),
                      check=False)
    assert proc.returncode == 2 and "is a name the pipeline writes itself" in proc.stderr
    assert digest(run) == before
    model = json.loads((run / "submission.manifest.json").read_text())
    base = json.loads((run / "baseline_global.manifest.json").read_text())
    assert model["inputs"][0].get("experiment") == EXPERIMENT and "global" in base["inputs"][0]["baseline"]


# --- CSV as CSV requires ---
@pytest.mark.parametrize("fields", [("plain", "1 2"), ("car, front.jpg", "3 4"), ('say "hi".jpg', ""),
                                    ("line\nbreak.jpg", "5 6"), ("a,\"b\"\r\n", "7")])
def test_csv_rows_read_back_as_the_fields_written(fields):
    import io
    text = files.csv_row(*fields)
    assert text.endswith("\n") and list(csv.reader(io.StringIO(text, newline=""))) == [list(fields)]
    if not any(c in "".join(fields) for c in ',"\r\n'):
        assert text == ",".join(fields) + "\n"  # plain fields: what a join writes


def test_photo_names_with_commas_and_quotes_give_two_field_rows_in_masks_csv_and_the_submission(trained, tmp_path):
    out = clone(trained, tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    source = trained.root / files.TEST / f"{trained.ids[0]}.jpg"
    for name in ("car, front.jpg", 'the "best" car.jpg'):
        shutil.copy(source, photos / name)
    masks = tmp_path / "masks"
    run_script("03_predict.py", *args_for(trained, out, "--images", photos, "--images-out", masks))
    with open(masks / "masks.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "rle_mask"] and sorted(r[0] for r in rows[1:]) == ["car, front.jpg",
                                                                                 'the "best" car.jpg']
    assert all(len(r) == 2 for r in rows) and rows[1][1] == rows[2][1]  # same photo, same mask
    # a test image whose file name holds a comma: its submission row is quoted and reads back as two fields
    root = tmp_path / "in put"
    shutil.copytree(trained.root, root)
    (root / files.SAMPLE_SUBMISSION).unlink()  # rows keyed by the test file names
    (root / files.TEST / f"{trained.ids[0]}.jpg").rename(root / files.TEST / "car, front.jpg")
    shutil.rmtree(root / files.TEST_MASKS)
    run_script("03_predict.py", "--input", root, "--output", out, *FLAGS, "--replace")
    run_script("04_submit.py", "--input", root, "--output", out, *FLAGS)
    with gzip.open(files.run_dir(out, EXPERIMENT) / "submission.csv.gz", "rt", newline="") as f:
        rows = list(csv.reader(f))
    assert all(len(r) == 2 for r in rows) and "car, front.jpg" in [r[0] for r in rows]
    rle.validate(dict(rows[1:])["car, front.jpg"], (160, 240))


# --- never replace a file the project did not write ---
def test_images_out_never_replaces_the_users_files_unless_asked(trained, tmp_path):
    out = clone(trained, tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(trained.root / files.TEST / f"{trained.ids[0]}.jpg", photos / "car.jpg")
    mine = photos / "car_mask.png"
    mine.write_bytes(b"the user's own mask")
    proc = run_script("03_predict.py", *args_for(trained, out, "--images", photos / "car.jpg", "--images-out", photos),
                      check=False)
    line = error_line(proc)
    assert f"{mine}: exists and was not written by 03_predict.py --images" in line and "--overwrite" in line
    assert mine.read_bytes() == b"the user's own mask" and sorted(p.name for p in photos.iterdir()) == [
        "car.jpg", "car_mask.png"]  # nothing written
    (cmd,) = commands_in(line)
    assert cmd[cmd.index("--images-out") + 1] == str(photos)
    run_named(cmd)  # the named command replaces it, as asked
    assert mine.read_bytes() != b"the user's own mask" and (photos / "car_overlay.jpg").exists()
    # its own files are replaced by a second run without asking, and are not taken for photos of the folder
    again = run_script("03_predict.py", *args_for(trained, out, "--images", photos, "--images-out", photos))
    assert "1 photo(s)" in again.stdout
    # a file of its own that the user changed since is the user's again
    mine.write_bytes(b"edited by hand")
    line = error_line(run_script("03_predict.py", *args_for(trained, out, "--images", photos, "--images-out", photos),
                                 check=False))
    assert "(or was changed since)" in line and mine.read_bytes() == b"edited by hand"


# --- every check before the first write ---
def test_a_test_id_without_a_view_gets_the_global_average_mask_in_the_view_baseline(trained, tmp_path):
    root = tmp_path / "in put"
    shutil.copytree(trained.root, root)
    odd = "000000000000_retake"
    shutil.copy(root / files.TEST / f"{trained.ids[0]}.jpg", root / files.TEST / f"{odd}.jpg")
    sample = root / files.SAMPLE_SUBMISSION
    sample.write_text(sample.read_text() + f"{odd}.jpg,\n")
    out = clone(trained, tmp_path)
    run_script("03_predict.py", "--input", root, "--output", out, *FLAGS, "--replace")
    proc = run_script("04_submit.py", "--input", root, "--output", out, *FLAGS, "--baselines")
    assert "1 test image(s) with no view of the training masks got the global average" in proc.stdout
    run = files.run_dir(out, EXPERIMENT)
    rows = {r[0]: r[1] for r in csv.reader(gzip.open(run / "baseline_view.csv.gz", "rt"))}
    assert rows[f"{odd}.jpg"] != "" and rows[f"{odd}.jpg"] not in {rows[f"{i}.jpg"] for i in trained.ids}
    assert json.loads((run / "baseline_view.manifest.json").read_text())["images_without_a_view"] == 1


def test_a_failure_while_preparing_the_baselines_leaves_the_earlier_submission_untouched(trained, tmp_path,
                                                                                        monkeypatch):
    """04 computes and checks everything (maps, baselines, their rows) before it writes its first file."""
    import params
    from lib import baseline
    out = clone(trained, tmp_path)
    run_script("03_predict.py", *args_for(trained, out))
    run_script("04_submit.py", *args_for(trained, out))
    run = files.run_dir(out, EXPERIMENT)
    before = digest(run)

    def fail(*a, **k):
        raise PipelineError("a baseline that cannot be made")
    monkeypatch.setattr(baseline, "plan_baseline_submission", fail)
    stage = load_script("04_submit.py")
    p, args = params.parse("", [str(a) for a in args_for(trained, out, "--baselines", "--threshold", "0.3")],
                           extra=stage.add_args, script="04_submit.py")
    with pytest.raises(PipelineError, match="a baseline that cannot be made"):
        stage.main(p, args.preds, args.baselines, args.score)
    assert digest(run) == before


# --- a threshold keeps what is above it ---
@pytest.mark.parametrize("threshold", [0.001, 0.5, 0.9, 0.999, 0.99999])
def test_every_threshold_keeps_the_pixels_above_it_in_the_submission_masks(threshold):
    """The submission's own mask function: a map's 1.0 pixels (level 255) pass 0.999 (they once gave empty rows),
    and a pixel passes exactly when its stored probability is above the threshold, at any blend of folders."""
    from lib.task import BINARY
    rng = np.random.default_rng(1)
    prob = rng.integers(0, 256, (32, 64), dtype=np.uint8)
    prob[:4] = 255
    mask = BINARY.decide_maps([prob, prob], [0.5, 0.5], (32, 64), threshold, "none")
    assert np.array_equal(mask, prob / 255 > threshold) and mask[:4].all()


# --- images too large to decode whole ---
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (its pixels are not there: only the header is ever read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_an_image_too_large_to_decode_whole_is_one_line_in_01_and_03_and_the_limit_flag_repairs(trained, tmp_path):
    root = tmp_path / "in put"
    shutil.copytree(trained.root, root)
    big = root / files.TRAIN / sorted(p.name for p in (root / files.TRAIN).iterdir())[0]
    saved = big.read_bytes()
    big.write_bytes(png_header_only(13400, 13400))  # 180 MP: PIL's decompression-bomb error before
    out = tmp_path / "out"
    proc = run_script("01_prepare.py", "--input", root, "--output", out, *FLAGS, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists()
    assert f"{big}: 13400x13400 is 179.6 megapixels, above --max-image-mp 100" in proc.stderr
    big.write_bytes(saved)
    # a real image above a lower limit: refused in 01 and in 03 (a test photo), and the named command repairs
    proc = run_script("01_prepare.py", "--input", root, "--output", out, *FLAGS, "--max-image-mp", "0.03",
                      check=False)
    assert proc.returncode == 1 and "240x160 is 0.0384 megapixels, above --max-image-mp 0.03" in proc.stderr
    cmd = commands_in(proc.stderr)[0]
    assert cmd[cmd.index("--max-image-mp") + 1] == "1" and cmd.count("--max-image-mp") == 1
    run_named(cmd)
    assert (out / "folds.csv").exists()
    trained_out = clone(trained, tmp_path)
    test_image = root / files.TEST / f"{trained.ids[0]}.jpg"
    line = error_line(run_script("03_predict.py", "--input", root, "--output", trained_out, *FLAGS, "--images",
                                 test_image, "--images-out", tmp_path / "masks", "--max-image-mp", "0.03", check=False))
    assert line.startswith(f"error: {test_image}: 240x160") and "--max-image-mp 1" in line
    assert not (tmp_path / "masks").exists()


# --- no link followed into someone else's file ---
def test_a_link_planted_at_a_temporary_name_is_replaced_not_written_through(tmp_path):
    import os
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    final = tmp_path / "out" / "tuning.json"
    final.parent.mkdir()
    (final.parent / f".tuning.json{files.TMP_MARK}{os.getpid()}").symlink_to(victim)
    files.write_json(final, {"a": 1})
    assert victim.read_text() == "someone else's file" and json.loads(final.read_text()) == {"a": 1}
    link = tmp_path / "out" / "submission.csv.gz"
    link.symlink_to(victim)  # a final name that is a link: the link is replaced, its target never written
    files.write_bytes_atomic(link, b"rows")
    assert victim.read_text() == "someone else's file" and not link.is_symlink() and link.read_bytes() == b"rows"


# --- a fallback that would leak validation images is a refusal ---
def test_one_odd_id_among_carvana_ids_is_refused_and_the_named_rule_keeps_its_car_together(trained, tmp_path):
    import pandas as pd
    root = tmp_path / "in put"
    shutil.copytree(trained.root, root)
    first = sorted(p.stem for p in (root / files.TRAIN).glob("*.jpg"))[0]
    odd = f"{first}_retake"
    shutil.copy(root / files.TRAIN / f"{first}.jpg", root / files.TRAIN / f"{odd}.jpg")
    shutil.copy(root / files.TRAIN_MASKS / files.mask_name(first), root / files.TRAIN_MASKS / files.mask_name(odd))
    (root / files.TRAIN_MASKS_CSV).unlink()  # it would not list the retake
    out = tmp_path / "out"
    line = error_line(run_script("01_prepare.py", "--input", root, "--output", out, *FLAGS, check=False))
    assert f"are not <car>_<NN> as the others are ({odd})" in line and not out.exists()
    run_named(commands_in(line)[0])
    split = pd.read_csv(out / "folds.csv").set_index("id")
    car = first.rsplit("_", 1)[0]
    assert split.loc[odd, "car"] == car and split.loc[split.car == car, "fold"].nunique() == 1


def test_a_link_planted_where_a_lock_file_goes_is_refused_not_written_through(trained, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / files.LOCK).symlink_to(victim)
    line = error_line(run_script("01_prepare.py", "--input", trained.root, "--output", out, *FLAGS, check=False))
    assert f"{out / files.LOCK}: a symbolic link where a lock file belongs" in line
    assert victim.read_text() == "someone else's file" and not (out / "folds.csv").exists()
    (out / files.LOCK).unlink()  # as the message says
    run_named(commands_in(line)[0])
    assert (out / "folds.csv").exists() and victim.read_text() == "someone else's file"


def test_04_says_in_one_line_when_the_model_scores_below_the_trivial_baseline_and_still_writes(trained, tmp_path):
    """The baselines are scored out-of-fold on every 04 run (not only with --baselines) to compare the model."""
    out = clone(trained, tmp_path)
    proc = run_script("04_submit.py", *args_for(trained, out))
    run = files.run_dir(out, EXPERIMENT)
    model = json.loads((run / "submission.manifest.json").read_text())["oof_dice"]
    run_script("04_submit.py", *args_for(trained, out, "--baselines", "--submission", "again"))
    best = max(json.loads(m.read_text())["oof_dice"] for m in run.glob("baseline_*.manifest.json"))
    warned = [line for line in proc.stdout.splitlines() if "below the trivial baseline" in line]
    assert len(warned) == (model < best), (model, best, proc.stdout)
    if warned:
        assert f"{model:.5f}" in warned[0] and f"{best:.5f}" in warned[0]
    assert (run / "submission.csv.gz").exists()


def test_04_writes_the_submission_when_the_baselines_cannot_be_scored_without_baselines(trained, tmp_path):
    """The comparison with the baselines is a courtesy of a plain 04 run: training images gone (only the test maps
    and test images kept) cost the comparison, said in one line, not the submission."""
    out = clone(trained, tmp_path)
    root = tmp_path / "input"
    shutil.copytree(trained.root, root, ignore=shutil.ignore_patterns(files.TRAIN, files.TRAIN_MASKS))
    shutil.rmtree(out / "cache", ignore_errors=True)
    proc = run_script("04_submit.py", "--input", root, "--output", out, *FLAGS)
    assert (files.run_dir(out, EXPERIMENT) / "submission.csv.gz").exists()
    assert [line for line in proc.stdout.splitlines() if "not compared with the average-mask baselines" in line]
    refused = run_script("04_submit.py", "--input", root, "--output", out, *FLAGS, "--baselines", "--submission",
                         "again", check=False)
    assert refused.returncode != 0 and not (files.run_dir(out, EXPERIMENT) / "again.csv.gz").exists()


def test_03_prints_its_tuning_lines_under_a_header_that_labels_every_column(trained):
    lines = trained.predict.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "TTA"])
    assert lines[at].split()[:6] == ["model", "TTA", "post-processing", "threshold", "OOF", "Dice"], lines[at]
    assert lines[at].split()[6:] == "min area, OOF Dice without gating".split(), lines[at]  # the pooled row's gating
    rows = lines[at + 1:at + 4]  # fold 0, fold 1, the 2-fold out-of-fold row (--tta none; --postprocess auto)
    assert [r.split()[:3] for r in rows] == [["fold", "0", "model"], ["fold", "1", "model"], ["2-fold", "out-of-fold",
                                                                                            "none"]], rows
    column = lines[at].index("post-processing")
    assert all(r[column:column + len("post-processing")].strip() in ("none", "largest") for r in rows), rows
