"""05_export.py and the torch-free predictor (lib/deploy.py, deploy.py): parity with torch, the masks of
03_predict.py --images (binary and multi-class), no torch imported, one repairable line for each bad input, the
user's files never replaced unless asked, unreadable photos skipped."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import PYTHON, ROOT, TINY_FLAGS, run_script
from lib import deploy, files, photos
from lib.oof import at_size
from test_failures import EXPERIMENT, FLAGS, clone, digest, error_line
from test_outputs import commands_in, run_named
from test_repairs import advised

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """A clone of the trained run, exported with --check 4, and 03_predict.py --images masks of its test photos
    (fp32: --amp off, as the graph), both with hflip TTA."""
    base = tmp_path_factory.mktemp("export")
    out = clone(trained, base)
    args = ["--input", trained.root, "--output", out, *FLAGS, "--amp", "off", "--tta", "hflip"]  # TTA in the graph
    proc = run_script("05_export.py", *args, "--check", "4")
    masks = base / "masks_03"
    run_script("03_predict.py", *args, "--images", trained.root / files.TEST, "--images-out", masks)
    onnx = files.run_dir(out, EXPERIMENT) / "export" / deploy.ONNX_NAME
    return SimpleNamespace(out=out, args=args, check=proc, masks=masks, onnx=onnx)


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory):
    """A tiny 5-class demo run (the full model, one epoch at 32 x 64), exported with --check 4, and 03_predict.py
    --images masks of its test photos (--amp off, hflip TTA, as the graph)."""
    base = tmp_path_factory.mktemp("export_multiclass")
    root, out = base / "input", base / "out"
    flags = [*TINY_FLAGS, "--classes", "5", "--class-colors", root / "classes.csv", "--input", root, "--output", out,
             "--height", "32", "--width", "64", "--epochs", "1", "--amp", "off", "--tta", "hflip"]
    run_script("01_prepare.py", "--demo", "--demo-kind", "multiclass", "--demo-train-cars", "2", "--demo-test-cars",
               "1", "--demo-width", "192", "--demo-height", "128", *flags)
    run_script("02_train.py", "--fold", "full", *flags)
    check = run_script("05_export.py", *flags, "--check", "4")
    photos_in = sorted((root / files.TEST).iterdir())[:6]
    masks = base / "masks_03"
    run_script("03_predict.py", *flags, "--images", *photos_in, "--images-out", masks)
    onnx = files.run_dir(out, EXPERIMENT) / "export" / deploy.ONNX_NAME
    return SimpleNamespace(photos=photos_in, check=check, masks=masks, onnx=onnx)


def same_masks(ours, theirs) -> list[str]:
    """The mask PNG names of both folders (the same), each pair identical, and the same masks.csv."""
    names = sorted(p.name for p in theirs.glob("*_mask.png"))
    assert names and names == sorted(p.name for p in ours.glob("*_mask.png"))
    for name in names:
        a, b = cv2.imread(str(ours / name), cv2.IMREAD_UNCHANGED), cv2.imread(str(theirs / name), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape and np.array_equal(a, b), name
    assert (ours / photos.MASKS_CSV).read_text() == (theirs / photos.MASKS_CSV).read_text()
    return names


def test_check_compares_onnxruntime_with_torch_within_one_level(exported):
    proc = exported.check
    found = re.search(r"max \|diff\| (\S+), mean (\S+)", proc.stdout)
    assert found, proc.stdout
    worst, mean = float(found[1].rstrip(",")), float(found[2])
    assert 0 <= mean <= worst <= 1 / 255
    record = json.loads(exported.onnx.with_name(deploy.JSON_NAME).read_text())
    assert record["tta"] == "hflip" and record["task"]["classes"] == 1 and record["input"]["size"] == [32, 64]


def test_deploy_imports_no_torch_and_writes_the_masks_of_03(exported, trained, tmp_path):
    onnx, masks_03 = exported.onnx, exported.masks
    out = tmp_path / "masks onnx"
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
            "print('loaded:', sorted(m for m in ('torch', 'pandas', 'PIL', 'params') if m in sys.modules))")
    proc = subprocess.run([PYTHON, "-c", code, str(ROOT / "deploy.py"), str(onnx), "--images",
                           str(trained.root / files.TEST), "--images-out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "loaded: []" in proc.stdout, proc.stdout
    same_masks(out, masks_03)


def test_export_of_a_run_without_models_names_the_runs_that_have_one_and_writes_nothing(exported):
    out = exported.out
    before = digest(out)
    line = error_line(run_script("05_export.py", *exported.args, "--experiment", "nothing_trained", check=False))
    assert "nothing_trained: no trained model" in line
    (cmd,) = [c for c in commands_in(line) if Path(c[1]).name == "05_export.py"]  # the run that has one
    assert cmd[cmd.index("--experiment") + 1] == EXPERIMENT
    assert digest(out) == before and not (out / "nothing_trained").exists()


def test_missing_or_foreign_json_is_refused_and_the_named_export_repairs_it(exported, trained, tmp_path):
    onnx = exported.onnx
    meta = onnx.with_name(deploy.JSON_NAME)
    saved, graph = meta.read_bytes(), onnx.read_bytes()
    photos = trained.root / files.TEST
    try:
        # from another run: the JSON describes another graph (its digest)
        record = json.loads(saved)
        record["onnx_sha256"] = "0" * 64
        meta.write_text(json.dumps(record))
        line = error_line(run_script("deploy.py", onnx, "--images", photos, "--images-out", tmp_path / "a",
                                     check=False))
        assert str(meta) in line and "another ONNX file" in line and not (tmp_path / "a").exists()
        meta.unlink()
        line = error_line(run_script("deploy.py", onnx, "--images", photos, "--images-out", tmp_path / "b",
                                     check=False))
        assert str(meta) in line and "missing" in line and not (tmp_path / "b").exists()
        run_script("05_export.py", *advised(line, "05_export.py"), "--input", trained.root, *FLAGS)
        run_script("deploy.py", onnx, "--images", photos, "--images-out", tmp_path / "b")
        assert sorted(p.name for p in (tmp_path / "b").iterdir() if not p.name.startswith(".")) == sorted(
            p.name for p in exported.masks.iterdir() if not p.name.startswith("."))
    finally:  # as the other tests expect them
        meta.write_bytes(saved)
        onnx.write_bytes(graph)


def test_a_photo_of_another_channel_count_is_refused_before_anything_is_written(exported, trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    source = sorted((trained.root / files.TEST).iterdir())[0]
    cv2.imwrite(str(photos / "a.png"), cv2.imread(str(source)))
    cv2.imwrite(str(photos / "grey.png"), cv2.imread(str(source), cv2.IMREAD_GRAYSCALE))
    out = tmp_path / "masks"
    line = error_line(run_script("deploy.py", exported.onnx, "--images", photos, "--images-out", out, check=False))
    assert "grey.png" in line and "1 channel(s)" in line and not out.exists()
    fix = line.split("`")[1]
    subprocess.run(shlex.split(fix), check=True, cwd=ROOT)  # exactly as printed
    run_script("deploy.py", exported.onnx, "--images", photos, "--images-out", out)
    assert (out / "grey_mask.png").exists() and (out / "a_mask.png").exists()


def test_a_multiclass_run_exports_checks_and_deploys_to_the_class_masks_of_03(multiclass, exported, tmp_path):
    found = re.search(r"max \|diff\| (\S+), mean (\S+)", multiclass.check.stdout)
    assert found and float(found[1].rstrip(",")) <= 1 / 255, multiclass.check.stdout
    record = json.loads(multiclass.onnx.with_name(deploy.JSON_NAME).read_text())
    assert record["task"]["classes"] == 5 and record["tta"] == "hflip"
    out = tmp_path / "masks"
    run_script("deploy.py", multiclass.onnx, "--images", *multiclass.photos, "--images-out", out)
    model = deploy.load(multiclass.onnx)
    ours_csv, theirs_csv = ((folder / photos.MASKS_CSV).read_text().splitlines() for folder in (out, multiclass.masks))
    assert [r.split(",")[0] for r in ours_csv] == [r.split(",")[0] for r in theirs_csv]
    assert len(ours_csv) == 1 + 4 * len(multiclass.photos)  # a row per photo and foreground class
    # identical but for near-ties: onnxruntime's probabilities differ from torch's by <= 1/255 (--check), so a pixel
    # may take the other of two classes only where the two are within 2 levels (of 255) of each other
    for photo in multiclass.photos:
        name = f"{photo.stem}_mask.png"
        ours, theirs = (cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED) for folder in (out, multiclass.masks))
        assert ours.shape == theirs.shape and ours.max() < 5  # a class index per pixel, not 0/255
        ys, xs = np.nonzero(ours != theirs)
        assert len(ys) <= ours.size / 1000, (name, len(ys))
        image, orig = deploy.net_image(photo, *model.size)
        levels = at_size(model.maps(image[None])[0], model.task, *orig)[:, ys, xs].astype(int)
        gap = np.abs(levels[ours[ys, xs], np.arange(len(ys))] - levels[theirs[ys, xs], np.arange(len(ys))])
        assert (gap <= 2).all(), (name, gap)
        if not len(ys):
            assert [r for r in ours_csv if r.split(",")[0].rsplit("_", 1)[0] == photo.stem] == \
                [r for r in theirs_csv if r.split(",")[0].rsplit("_", 1)[0] == photo.stem], name
    # the JSON of another run (the binary one) beside this graph: refused by its digest, nothing written
    meta = multiclass.onnx.with_name(deploy.JSON_NAME)
    saved = meta.read_bytes()
    try:
        meta.write_bytes(exported.onnx.with_name(deploy.JSON_NAME).read_bytes())
        line = error_line(run_script("deploy.py", multiclass.onnx, "--images", *multiclass.photos, "--images-out",
                                     tmp_path / "other", check=False))
        assert str(meta) in line and "another ONNX file" in line and not (tmp_path / "other").exists()
    finally:
        meta.write_bytes(saved)


def test_deploy_never_replaces_a_file_it_did_not_write_unless_asked(exported, trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sorted((trained.root / files.TEST).iterdir())[0], folder / "car.jpg")
    mine = folder / "car_mask.png"
    mine.write_bytes(b"the user's own mask")
    line = error_line(run_script("deploy.py", exported.onnx, "--images", folder / "car.jpg", "--images-out", folder,
                                 check=False))
    assert f"{mine}: exists and was not written by 03_predict.py --images or deploy.py" in line
    assert mine.read_bytes() == b"the user's own mask" and sorted(p.name for p in folder.iterdir()) == [
        "car.jpg", "car_mask.png"]  # nothing written
    (cmd,) = commands_in(line)
    assert Path(cmd[1]).name == "deploy.py" and "--overwrite" in cmd
    run_named(cmd)  # the named command replaces it, as asked
    assert mine.read_bytes() != b"the user's own mask" and (folder / "car_overlay.jpg").exists()
    # its own files are replaced without asking (by either writer), and are not taken for photos of the folder
    again = run_script("deploy.py", exported.onnx, "--images", folder, "--images-out", folder)
    assert "wrote 1 masks" in again.stdout
    run_script("03_predict.py", *exported.args, "--images", folder, "--images-out", folder)
    run_script("deploy.py", exported.onnx, "--images", folder, "--images-out", folder)
    # a file of its own that the user changed since is the user's again
    mine.write_bytes(b"edited by hand")
    line = error_line(run_script("deploy.py", exported.onnx, "--images", folder, "--images-out", folder, check=False))
    assert "(or was changed since)" in line and mine.read_bytes() == b"edited by hand"


def test_deploy_skips_unreadable_photos_with_a_line_each_and_fails_only_when_none_is_read(exported, trained,
                                                                                         tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sorted((trained.root / files.TEST).iterdir())[0], folder / "good.jpg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"not an image at all")
    (folder / "folder.png").mkdir()
    out = tmp_path / "masks"
    proc = run_script("deploy.py", exported.onnx, "--images", folder, "--images-out", out)
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3 and all(any(name in line for line in skipped)
                                     for name in ("empty.png", "text.jpg", "folder.png"))
    assert "skipped 3 of 4 file(s)" in proc.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "good_mask.png", "good_overlay.jpg", photos.MASKS_CSV]
    assert [r.split(",")[0] for r in (out / photos.MASKS_CSV).read_text().splitlines()] == ["img", "good.jpg"]
    (folder / "good.jpg").unlink()
    line = error_line(run_script("deploy.py", exported.onnx, "--images", folder, "--images-out", tmp_path / "none",
                                 check=False))
    assert "none of the 3 photos could be read" in line and not (tmp_path / "none").exists()
