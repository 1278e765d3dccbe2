"""05_export.py and the torch-free predictor (lib/deploy.py, deploy.py): parity with torch, the masks of
03_predict.py --images, no torch imported, and one repairable line for each bad input."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import PYTHON, ROOT, run_script
from lib import deploy, files
from test_failures import EXPERIMENT, FLAGS, clone, digest, error_line
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
    names = sorted(p.name for p in masks_03.glob("*_mask.png"))
    assert names and names == sorted(p.name for p in out.glob("*_mask.png"))
    for name in names:
        ours, theirs = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED), cv2.imread(str(masks_03 / name),
                                                                                      cv2.IMREAD_UNCHANGED)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), name
    assert (out / "masks.csv").read_text() == (masks_03 / "masks.csv").read_text()


def test_export_of_a_run_without_models_names_the_runs_that_have_one_and_writes_nothing(exported):
    out = exported.out
    before = digest(out)
    proc = run_script("05_export.py", *exported.args, "--experiment", "nothing_trained", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    first, *listed = proc.stderr.strip().splitlines()  # one line, then one line per run with a model
    assert "nothing_trained: no trained model (fold*/model.pt) in this run" in first
    assert listed and all("05_export.py" in line and "--experiment demo" in line for line in listed), listed
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
        assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(p.name for p in exported.masks.iterdir()
                                                                           if not p.name.startswith("."))
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
