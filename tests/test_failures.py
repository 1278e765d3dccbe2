"""Reliability: bad inputs, interruptions, files from elsewhere, bad numbers, resources (docs/RELIABILITY.md).

Every failure must be one line that names the file and what to do, a non-zero exit, no traceback as
the only message, and everything written before left intact. Cases already proven elsewhere
(test_prepare.py, test_train.py, test_submission.py, test_metrics.py, test_params.py) are not repeated
here; docs/RELIABILITY.md lists where each case is tested.

The ``trained`` fixture runs the real pipeline once on tiny data, in folders whose names hold a space:
01_prepare.py, 02_train.py --fold all (2 folds, 1 epoch, 32 x 64) and an uninterrupted 03_predict.py
(the reference maps). Tests work on hard-linked clones of it (every product write is a rename, so the
original is never changed through a link; tests that damage a file unlink it first).
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd

import pytest
import torch
from PIL import Image

import params
from conftest import EXPERIMENT, FLAGS, H, PYTHON, ROOT, W, run_script, start_stopped  # noqa: F401  (trained: conftest)
from lib import cache as cache_mod, files, folds as folds_mod, inputs, predict, submission, testmaps, \
    tuning as tuning_mod
from lib.errors import PipelineError, run_main
from lib.model import load_model, read_checkpoint
from lib.task import BINARY


# --- helpers ---
def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one-line error a script ended with (after any progress-bar remnants), checked for the basics."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    last = re.split(r"[\r\n]+", proc.stderr.strip())[-1]
    assert last.startswith("error: "), proc.stderr
    return last


def strict_error(proc: subprocess.CompletedProcess) -> str:
    """As error_line, for scripts that fail before any progress bar: stderr is exactly one 'error: ' line."""
    line = error_line(proc)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return line


def digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``; files over 1 MiB (checkpoints) by
    inode, size and mtime instead, which every product write (a rename) changes."""
    def one(p: Path) -> str:
        st = p.stat()
        if st.st_size > 1 << 20:
            return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        return hashlib.sha256(p.read_bytes()).hexdigest()
    return {str(p.relative_to(folder)): one(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if files.TMP_MARK in p.name)


def dead_pid() -> int:
    """The id of a process that has just ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file (a hard-linked original is never changed)."""
    path.unlink()
    path.write_bytes(data)


def load_script(name: str):
    """A numbered stage script as a module (its main() is guarded by __name__)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name[:2]}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_input(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def first_id(root: Path) -> str:
    return sorted(p.stem for p in (root / files.TRAIN).glob("*.jpg"))[0]


def clone(t: SimpleNamespace, tmp_path: Path, with_maps: bool = True) -> Path:
    """A hard-linked copy of the trained output folder (with a real copy of the reference maps)."""
    out = tmp_path / "out put"
    shutil.copytree(t.out, out, copy_function=os.link)
    if with_maps:
        shutil.copytree(t.reference, files.run_dir(out, EXPERIMENT) / files.TEST_PROBS)
    return out


def args_for(root: Path, out: Path, *extra: str) -> list:
    return ["--input", root, "--output", out, *FLAGS, *extra]


# === input data (cases not in test_prepare.py) ===
def _colour_mask(root):
    i = first_id(root)
    path = root / files.TRAIN_MASKS / files.mask_name(i)
    car = inputs.read_mask(path)
    rgb = np.zeros((*car.shape, 3), np.uint8)
    rgb[car] = (255, 0, 0)  # a red car on black: three channels that differ
    Image.fromarray(rgb).save(path, format="PNG")  # under the .gif name, as an exported file might be
    return files.mask_name(i), "colour mask (mode RGB)"


def _greyscale_soft_mask(root):
    i = first_id(root)
    path = root / files.TRAIN_MASKS / files.mask_name(i)
    car = inputs.read_mask(path).astype(np.uint8) * 255
    Image.fromarray(cv2.GaussianBlur(car, (7, 7), 0), "L").save(path, format="GIF")  # anti-aliased edges
    return files.mask_name(i), "mask is not binary"


def _zero_byte_jpeg(root):
    i = first_id(root)
    (root / files.TRAIN / f"{i}.jpg").write_bytes(b"")
    return f"{i}.jpg", "empty file (0 bytes)"


def _duplicate_id_by_case(root):
    i = first_id(root)
    shutil.copy(root / files.TRAIN / f"{i}.jpg", root / files.TRAIN / f"{i}.JPG")
    return f"{i}.JPG and {i}.jpg", "duplicate image ids"


def _duplicate_row_in_train_masks_csv(root):
    path = root / files.TRAIN_MASKS_CSV
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    pd.concat([df, df.iloc[:1]]).to_csv(path, index=False)
    return files.TRAIN_MASKS_CSV, f"duplicate rows for {files.image_id(df.img[0])}"


def _train_masks_csv_id_not_on_disk(root):
    path = root / files.TRAIN_MASKS_CSV
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    extra = pd.DataFrame({"img": ["0000deadbeef_01.jpg"], "rle_mask": ["1 5"]})
    pd.concat([df, extra]).to_csv(path, index=False)
    return files.TRAIN_MASKS_CSV, "1 id(s) with no mask GIF on disk: 0000deadbeef_01"


BAD_INPUTS = [_colour_mask, _greyscale_soft_mask, _zero_byte_jpeg, _duplicate_id_by_case,
              _duplicate_row_in_train_masks_csv, _train_masks_csv_id_not_on_disk]


@pytest.mark.parametrize("damage", BAD_INPUTS, ids=[f.__name__[1:] for f in BAD_INPUTS])
def test_bad_training_input_is_named_and_refused(damage, tiny_demo, tmp_path):
    root = copy_input(tiny_demo, tmp_path / "in put")
    before = digest(root)
    name, reason = damage(root)
    with pytest.raises(PipelineError) as e:
        inputs.check_train(root, workers=0)
    assert any(name in ln and reason in ln for ln in str(e.value).splitlines()), str(e.value)
    assert set(digest(root)) >= set(before)  # nothing deleted or moved by the check


def test_car_with_views_missing_is_a_note_not_an_error(tiny_demo, tmp_path):
    root = copy_input(tiny_demo, tmp_path / "input")
    car = first_id(root).rsplit("_", 1)[0]
    gone = [f"{car}_{v:02d}" for v in (2, 7, 16)]
    for i in gone:
        (root / files.TRAIN / f"{i}.jpg").unlink()
        (root / files.TRAIN_MASKS / files.mask_name(i)).unlink()
    csv_path = root / files.TRAIN_MASKS_CSV
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    df[~df.img.map(files.image_id).isin(gone)].to_csv(csv_path, index=False)
    table, notes = inputs.check_train(root, workers=0)
    assert len(table) == 4 * 16 - 3 and table.groupby("car").size()[car] == 13
    assert any(f"1 car(s) have fewer views than the others (16): {car} (13)" in n for n in notes), notes


def test_stray_files_and_folders_are_skipped_everywhere(tiny_demo, tmp_path):
    root = copy_input(tiny_demo, tmp_path / "input")
    (root / files.TRAIN / "thumbnails").mkdir()
    (root / files.TRAIN / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / files.TRAIN_MASKS / "readme.txt").write_text("masks from Kaggle")
    (root / files.TEST / "notes.txt").write_text("hello")
    table, notes = inputs.check_train(root, workers=0)
    assert len(table) == 4 * 16
    assert any("thumbnails" in n for n in notes) and any("readme.txt" in n for n in notes)
    assert not any(".DS_Store" in n for n in notes)
    ids, paths = inputs.check_test(root)
    assert len(ids) == 16 and all(p.suffix == ".jpg" for p in paths.values())


@pytest.mark.parametrize("columns, rows, reason", [
    (["id", "rle_mask"], None, "columns are ['id', 'rle_mask'], expected ['img', 'rle_mask']"),
    (["img", "rle_mask", "extra"], None, "columns are ['img', 'rle_mask', 'extra']"),
    (["img", "rle_mask"], 0, "no rows"),
    (["img", "rle_mask"], "dup", "duplicate ids"),
])
def test_bad_sample_submission_is_named(columns, rows, reason, tiny_demo, tmp_path):
    root = copy_input(tiny_demo, tmp_path / "input")
    path = root / files.SAMPLE_SUBMISSION
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if rows == 0:
        df = df.iloc[:0]
    elif rows == "dup":
        df = pd.concat([df, df.iloc[:1]])
    df = df.reindex(columns=df.columns.tolist() + ["extra"]) if "extra" in columns else df
    df.columns = columns
    df.to_csv(path, index=False)
    with pytest.raises(PipelineError) as e:
        inputs.check_test(root)
    assert str(e.value).startswith(f"{path}: ") and reason in str(e.value)


@pytest.mark.parametrize("layout", ["no input folder", "empty input folder", "empty train folder"])
def test_empty_input_cli_says_what_is_missing(layout, tiny_demo, tmp_path):
    out = tmp_path / "out put"
    out.mkdir()
    (out / "folds.csv").write_text("an earlier split\n")
    if layout == "no input folder":
        root = tmp_path / "in put"
        expect = [f"{root}: input folder missing; run `"]
    elif layout == "empty input folder":
        root = tmp_path / "in put"
        root.mkdir()
        expect = [f"{root / files.TRAIN}: folder missing", "Kaggle layout"]
    else:
        root = copy_input(tiny_demo, tmp_path / "in put")
        for p in (root / files.TRAIN).iterdir():
            p.unlink()
        expect = [f"{root / files.TRAIN}: no *.jpg files (empty folder?)"]
    proc = run_script("01_prepare.py", "--input", root, "--output", out, *FLAGS, check=False)
    line = strict_error(proc)
    if layout == "no input folder":  # the advice carries the user's own flags, quoted for the shell
        named = shlex.split(line.split("`")[1])
        assert named[1].endswith("01_prepare.py") and "--demo" in named
        assert named[named.index("--input") + 1] == str(root) and named[named.index("--output") + 1] == str(out)
    assert all(e in line for e in expect), line
    assert (out / "folds.csv").read_text() == "an earlier split\n" and sorted(os.listdir(out)) == ["folds.csv"]


# === run state ===
def test_killed_prediction_reruns_to_the_same_maps(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    probs = files.run_dir(out, EXPERIMENT) / files.TEST_PROBS
    # stopped once the background writer has written 4 of the 16 maps, then killed
    proc = start_stopped("03_predict.py", *args_for(trained.root, out), at="lib.testmaps:write_map", calls=4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(probs.glob("*.png"))
    assert 0 < len(written) < len(trained.ids), f"killed with {len(written)} maps written: kill earlier or later"
    for path in written:  # no map is partial: each was renamed into place complete
        assert testmaps.read_map(path).shape == (H, W)
    assert not [p for p in os.listdir(probs) if p.endswith(".png") and files.TMP_MARK in p]
    # what a kill during a write leaves: a temporary file under another name, removed by the re-run
    partial = probs / f".{trained.ids[-1]}.png{files.TMP_MARK}{dead_pid()}"
    partial.write_bytes((trained.reference / f"{trained.ids[-1]}.png").read_bytes()[:40])
    rerun = run_script("03_predict.py", *args_for(trained.root, out))
    assert "tuning: reusing" in rerun.stdout
    assert f"test: {len(written)} of {len(trained.ids)} maps already done" in rerun.stdout
    assert sorted(os.listdir(probs)) == sorted(os.listdir(trained.reference))  # meta.json, maps, no temp files
    assert digest(probs) == digest(trained.reference)  # byte-identical to the uninterrupted run


def test_killed_submission_writer_leaves_no_file_under_the_final_name(tmp_path):
    folder = tmp_path / "run dir"
    folder.mkdir()
    final = folder / "submission.csv.gz"
    final.write_bytes(b"an earlier submission")
    writer = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pathlib import Path\n"
        "from lib import submission\n"
        "ids = [f'0000cafe{k:04d}_01' for k in range(600)]\n"
        "def codes():\n"
        "    for k in range(len(ids)):\n"
        "        if k == 500:\n"
        "            print('writing', flush=True)\n"
        "            time.sleep(600)\n"
        "        yield '1 5'\n"
        "submission.write_submission(Path(sys.argv[1]), ids, codes(), (64, 96))\n")
    proc = subprocess.Popen([PYTHON, "-c", writer, str(final)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # 500 rows handed to gzip, more to come
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert final.read_bytes() == b"an earlier submission"  # the earlier file is intact
    left = sorted(os.listdir(folder))
    assert left == [f".submission.csv.gz{files.TMP_MARK}{proc.pid}", "submission.csv.gz"], left
    assert sorted(p.name for p in folder.glob("*.csv.gz")) == ["submission.csv.gz"]  # never globbed as final
    # the next run writes the file and removes the killed writer's temporary one
    ids = ["0000cafe0000_01", "0000cafe0001_01"]
    assert submission.write_submission(final, ids, ["1 5", ""], (64, 96), expected_ids=ids) == 2
    assert sorted(os.listdir(folder)) == ["submission.csv.gz"]
    assert gzip.decompress(final.read_bytes()).decode().splitlines()[1:] == [f"{ids[0]}.jpg,1 5", f"{ids[1]}.jpg,"]


class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are in (the part before is really written)."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data) -> int:
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._f.flush()
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def full_disk_open(room: int):
    def fake_open(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        return FullDisk(f, room) if "w" in mode else f
    return fake_open


def test_submission_failing_mid_stream_keeps_the_earlier_one(trained, tmp_path, monkeypatch, capsys):
    out = clone(trained, tmp_path)
    run = files.run_dir(out, EXPERIMENT)
    earlier = {"submission.csv.gz": b"an earlier submission", "submission.manifest.json": b"{}\n"}
    for name, content in earlier.items():
        (run / name).write_bytes(content)
    stage = load_script("04_submit.py")
    p, args = params.parse("", [*map(str, args_for(trained.root, out))], extra=stage.add_args)
    monkeypatch.setattr(submission, "open", full_disk_open(room=60), raising=False)  # the gzip stream's file
    with pytest.raises(SystemExit) as e:
        run_main(lambda: stage.main(p, args.preds, args.baselines, args.score))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: disk full while writing {run / 'submission.csv.gz'}:")
    assert all((run / name).read_bytes() == content for name, content in earlier.items())
    assert temp_files(run) == []


# === files from elsewhere ===
def test_predict_rebuilds_each_model_from_its_checkpoint(trained):
    # the reference run was given --encoder resnet34 --height 128 --width 192; the checkpoints say resnet18, 32x64
    tuning = json.loads((trained.run / files.TUNING).read_text())
    assert tuning["size"] == [H, W] and {m["encoder"] for m in tuning["models"]} == {"resnet18"}
    assert all(testmaps.read_map(trained.reference / f"{i}.png").shape == (H, W) for i in trained.ids)


def test_checkpoints_that_do_not_fit_are_refused(trained, tmp_path):
    ckpt = read_checkpoint(trained.run / "fold0" / files.BEST)
    other = tmp_path / "other_encoder.pt"
    torch.save({**ckpt, "params": {**ckpt["params"], "encoder": "resnet34"}}, other)  # weights of a resnet18
    with pytest.raises(PipelineError, match=f"{other}: weights do not fit a Unet-resnet34"):
        load_model(other)
    out = clone(trained, tmp_path, with_maps=False)
    fold1 = files.fold_dir(out, EXPERIMENT, 1) / files.BEST
    ck1 = read_checkpoint(fold1)
    fold1.unlink()
    torch.save({**ck1, "params": {**ck1["params"], "height": 64, "width": 96}}, fold1)  # a fold of another size
    p = params.make_params(**{**params.PRESETS["demo"], "output": str(out), "device": "cpu"})
    with pytest.raises(PipelineError, match="trained at different sizes"):
        predict.load_ensemble(p, folds_mod.read(out))


def test_predict_refuses_a_corrupt_checkpoint(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    path = files.fold_dir(out, EXPERIMENT, 1) / files.BEST
    replace_file(path, path.read_bytes()[: path.stat().st_size // 2])  # as a copy cut short would be
    before = digest(files.run_dir(out, EXPERIMENT))
    line = strict_error(run_script("03_predict.py", *args_for(trained.root, out), check=False))
    assert f"{path}: corrupt or not a checkpoint" in line and "python 02_train.py --fold 1 --restart" in line
    assert digest(files.run_dir(out, EXPERIMENT)) == before


@pytest.mark.parametrize("origin", ["other models", "no meta.json"])
def test_predict_refuses_maps_from_elsewhere_until_replace(origin, trained, tmp_path):
    out = clone(trained, tmp_path)
    probs = files.run_dir(out, EXPERIMENT) / files.TEST_PROBS
    meta = probs / files.PROBS_META
    if origin == "other models":
        made_by = json.loads(meta.read_text())
        made_by["models"][0]["val_dice"] = 0.123  # another training of fold 0
        meta.write_text(json.dumps(made_by))
    else:
        meta.unlink()  # maps copied in from somewhere: nothing says what made them
    before = digest(probs)
    line = error_line(run_script("03_predict.py", *args_for(trained.root, out), check=False))
    assert f"{probs}: holds maps from other models or settings; add --replace" in line
    assert digest(probs) == before  # refused: nothing deleted or overwritten
    if origin == "other models":
        proc = run_script("03_predict.py", *args_for(trained.root, out), "--replace")
        assert f"test: 0 of {len(trained.ids)} maps already done" in proc.stdout
        assert digest(probs) == digest(trained.reference)


def test_predict_names_sample_submission_ids_missing_from_test(trained, tmp_path):
    root = copy_input(trained.root, tmp_path / "in put")
    gone = trained.ids[3:5]
    for i in gone:
        (root / files.TEST / f"{i}.jpg").unlink()
    out = clone(trained, tmp_path, with_maps=False)
    line = error_line(run_script("03_predict.py", *args_for(root, out), check=False))
    assert f"{root / files.TEST}: 2 of the {len(trained.ids)} images listed in {files.SAMPLE_SUBMISSION} are missing" \
           in line and all(i in line for i in gone)
    assert not (files.run_dir(out, EXPERIMENT) / files.TEST_PROBS).exists()


def test_truncated_test_image_read_by_a_loader_worker_is_one_line(trained, tmp_path):
    root = copy_input(trained.root, tmp_path / "in put")
    bad = root / files.TEST / f"{trained.ids[-1]}.jpg"  # the last batch: the earlier maps get written first
    bad.write_bytes(bad.read_bytes()[:300])
    out = clone(trained, tmp_path, with_maps=False)
    proc = run_script("03_predict.py", *args_for(root, out, "--workers", "1"), check=False)
    line = error_line(proc)
    assert line == f"error: {bad}: truncated JPEG (no end-of-image marker); download it again", line
    assert "DataLoader worker" not in proc.stderr
    probs = files.run_dir(out, EXPERIMENT) / files.TEST_PROBS
    for path in probs.glob("*.png"):  # the maps written before the failure are complete and kept
        assert (path.read_bytes() == (trained.reference / path.name).read_bytes())
    assert temp_files(probs) == []


def test_submit_refuses_maps_not_made_by_the_tuned_models(trained, tmp_path):
    out = clone(trained, tmp_path)
    run = files.run_dir(out, EXPERIMENT)
    probs = run / files.TEST_PROBS
    earlier = run / "submission.csv.gz"
    earlier.write_bytes(b"an earlier submission")
    submit = ["04_submit.py", "--input", trained.root, "--output", out, *FLAGS]
    # tuning.json was redone for other models (e.g. 03 re-run after retraining, stopped at its --replace refusal)
    meta = probs / files.PROBS_META
    good_meta = meta.read_text()
    made_by = json.loads(good_meta)
    made_by["models"][1]["epoch"] = 7
    meta.write_text(json.dumps(made_by))
    line = strict_error(run_script(*submit, check=False))
    assert f"{probs}: its maps were made by other models or settings than {run / files.TUNING}" in line
    assert "--replace" in line
    meta.write_text(good_meta)
    # one map of another size (from another experiment's folder)
    odd = probs / f"{trained.ids[5]}.png"
    testmaps.write_map(odd, np.zeros((H * 2, W * 2), np.uint8), (160, 240))
    line = strict_error(run_script(*submit, check=False))
    assert f"{odd}: map is {W * 2}x{H * 2}, the folder's tuning.json says {W}x{H}; run `" in line
    assert shlex.split(line.split("`")[1])[1].endswith("03_predict.py") and line.endswith("` again: it predicts such "
                                                                                          "maps again")
    assert earlier.read_bytes() == b"an earlier submission" and temp_files(run) == []
    assert not (run / "submission.manifest.json").exists()
    # put right, the same command writes the submission
    shutil.copy(trained.reference / odd.name, odd)
    run_script(*submit)
    assert gzip.decompress(earlier.read_bytes()).startswith(b"img,rle_mask\n")
    assert json.loads((run / "submission.manifest.json").read_text())["rows"] == len(trained.ids)


# === numbers ===
@pytest.mark.parametrize("value", ["1.5", "-0.1", "1", "nan"])
def test_threshold_outside_the_open_interval_is_refused(value, tmp_path):
    proc = run_script("04_submit.py", "--threshold", value, "--output", tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (f"error: --threshold {float(value)} must be in (0, 1), or 0 for the tuned one "
                           "(see 04_submit.py --help)\n")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5])
def test_tuned_threshold_outside_the_open_interval_is_refused(threshold, tmp_path):
    tuning = tuning_mod.Tuning("x", [0], "none", "none", 0.5, 0.9, (32, 64), (160, 240), 8, "auto", "auto", [],
                               BINARY, [])
    (tmp_path / files.TUNING).write_text(json.dumps({**tuning.record(), "threshold": threshold, "level": 0}))
    with pytest.raises(PipelineError, match=f"{tmp_path / files.TUNING}: threshold .* open interval"):
        tuning_mod.read(tmp_path)


# === resources ===
def _cpu_allocation():
    torch.empty(1 << 62, dtype=torch.uint8)  # the real CPU allocator failure


def _cuda_oom():
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)")


def _numpy_oom():
    raise MemoryError("Unable to allocate 80.0 GiB for an array with shape (100064, 1280, 1918, 3)")


@pytest.mark.parametrize("fail", [_cpu_allocation, _cuda_oom, _numpy_oom], ids=["cpu", "cuda", "numpy"])
def test_out_of_memory_gives_advice_not_a_crash_dump(fail, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(fail)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory: lower --batch-size"), err
    assert "--predict-batch-size" in err


def test_out_of_memory_in_a_training_step_keeps_the_finished_run(trained, tmp_path, monkeypatch, capsys):
    out = clone(trained, tmp_path, with_maps=False)
    before = digest(out)
    stage = load_script("02_train.py")
    argv = ["--fold", "0", *args_for(trained.root, out, "--experiment", "big", "--batch-size", "16")]
    p, args = params.parse("", [*map(str, argv)], extra=stage.add_args)

    def oom(*_):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 9663676416 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr("lib.losses.Combined.forward", oom)  # the first batch's loss
    with pytest.raises(SystemExit) as e:
        run_main(lambda: stage.main(p, args.fold, args.resume))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert re.split(r"[\r\n]+", err.strip())[-1].startswith("error: out of memory: lower --batch-size")
    assert all(digest(out).get(k) == v for k, v in before.items())  # every earlier file unchanged
    fold = files.fold_dir(out, "big", 0)
    assert not (fold / files.LAST).exists() and not (fold / files.BEST).exists() and temp_files(fold) == []


def test_disk_full_fails_cleanly_naming_the_file(tmp_path, monkeypatch, capsys):
    dest = tmp_path / "out put" / files.TUNING
    dest.parent.mkdir()
    dest.write_text('{"earlier": true}\n')
    monkeypatch.setattr(files, "open", full_disk_open(room=100), raising=False)
    with pytest.raises(SystemExit) as e:
        run_main(lambda: files.write_json(dest, {"scores": ["x" * 50] * 20}))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err == (f"error: disk full while writing {dest}: free space and re-run; files written before are "
                   "intact\n")
    assert dest.read_text() == '{"earlier": true}\n' and os.listdir(dest.parent) == [files.TUNING]


def test_other_os_errors_are_one_line_naming_the_file(tmp_path, capsys):
    target = tmp_path / "not a folder"
    target.write_text("a file where a folder should be")
    with pytest.raises(SystemExit) as e:
        run_main(lambda: files.write_text_atomic(target / "folds.csv", "id\n"))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {target}") and "check the path" in err


# === leftovers of killed runs ===
def test_stale_temporary_files_of_killed_writers_are_removed_live_ones_kept(tmp_path):
    dead = dead_pid()
    stale = [f".model.pt{files.TMP_MARK}{dead}", f".{'0' * 12}_01.png{files.TMP_MARK}{dead}"]
    kept = [f".last.pt{files.TMP_MARK}{os.getpid()}", "model.pt", ".hidden", f"notes{files.TMP_MARK}{dead}"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    assert files.remove_stale_temps(tmp_path, "model.pt") == 1  # only that file's
    assert files.remove_stale_temps(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert files.remove_stale_temps(tmp_path / "absent") == 0


def test_cache_build_killed_between_renames_is_rebuilt_not_trusted(tiny_demo, tmp_path, monkeypatch):
    ids = sorted(p.stem for p in (tiny_demo / files.TRAIN).glob("*.jpg"))
    out = tmp_path / "out"
    cache_mod.open_cache(tiny_demo, out, ids, H, W, workers=0, mode="on")
    folder = out / "cache"  # truth/ and the HxW image cache
    good = digest(folder)
    real_replace, renamed = os.replace, []

    class Killed(BaseException):
        pass

    def dies_after_the_first_array(src, dst):
        if f".npy{files.TMP_MARK}" in str(src) and renamed:
            raise Killed  # as a kill between two renames would stop it
        renamed.append(src)
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", dies_after_the_first_array)
    with pytest.raises(Killed):
        cache_mod.build_cache(tiny_demo, ids[:32], out, H, W, workers=0)  # the cache for other (new) data
    monkeypatch.undo()
    assert not list(folder.rglob("meta.json"))  # truth.npy is the new data's: nothing says it is complete
    cache = cache_mod.open_cache(tiny_demo, out, ids, H, W, workers=0, mode="on")  # rebuilt, not trusted
    assert len(cache.images) == len(ids) == len(cache.truth) and digest(folder) == good
