"""What a person meets first: --help that explains, masks for any folder of photos, readable progress in a log,
TensorBoard when asked for, the learning curve."""
import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import params
from conftest import PYTHON, ROOT, TINY_FLAGS, run_script
from lib import files, rle
from lib.errors import PipelineError
from lib.runtime import Dist


@pytest.fixture
def prepared(tiny_demo, tiny_prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_prepared, out)
    return tiny_demo, out


# --- --help ---
@pytest.mark.parametrize("script, own, shown, hidden", [
    ("01_prepare.py", [], ["--n-folds", "--demo-train-cars", "--cache"], ["--lr", "--tta", "--epochs"]),
    ("02_train.py", ["--fold", "--resume", "--restart"], ["--lr", "--epochs", "--amp", "--tensorboard"],
     ["--demo-width", "--submission", "--tta"]),
    ("03_predict.py", ["--images", "--images-out", "--shard", "--tune-only"], ["--tta", "--threshold"],
     ["--lr", "--n-folds"]),
    ("04_submit.py", ["--preds", "--baselines", "--score"], ["--threshold", "--submission"], ["--lr", "--epochs"]),
    ("05_export.py", ["--folds", "--check"], ["--experiment", "--output", "--input", "--tta", "--threshold",
                                              "--postprocess", "--device", "--threads", "--max-image-mp"],
     ["--lr", "--n-folds", "--submission", "--classes", "--amp"]),
])
def test_help_lists_the_stage_own_arguments_first_then_its_settings_explained(script, own, shown, hidden):
    proc = run_script(script, "--help")
    text = proc.stdout
    settings_at = text.index(f"settings {script} uses (params.py):")
    own_at = text.index(f"\n{script}:\n") if own else 0  # 01_prepare.py has no arguments of its own
    assert own_at < settings_at
    for flag in own:
        assert own_at < text.index(f"  {flag}") < settings_at, flag
    for flag in shown:
        assert text.index(f"  {flag}") > settings_at, flag
    for flag in hidden:
        assert f"  {flag} " not in text and f"  {flag}\n" not in text, flag
    assert "Settings of the other stages are accepted too" in text


def test_help_says_description_default_presets_and_choices():
    text = run_script("02_train.py", "--help").stdout.replace("\n", " ")
    text = " ".join(text.split())
    assert "--amp STR mixed precision: auto" in text and "choices auto | bf16 | fp16 | off" in text
    assert "--lr FLOAT peak learning rate (default 0.0003; --preset demo 0.003, cpu 0.002)" in text
    assert "--augment, --no-augment hflip + shift/scale/rotate + HSV" in text and "(default on)" in text
    every = run_script("params.py").stdout
    assert "--lr FLOAT" in every and "--demo-width INT" in every and "--submission STR" in every


@pytest.mark.parametrize("script", ["01_prepare.py", "02_train.py", "03_predict.py", "04_submit.py", "05_export.py",
                                    "deploy.py"])
def test_help_examples_name_the_interpreter_and_path_that_ran_the_script(script):
    """The usage lines of --help start each example with the interpreter and script path the user ran (as the
    advice of an error does), so that an example pastes as printed; torchrun is the one beside that interpreter."""
    import os
    import shlex
    text = run_script(script, "--help").stdout
    python = os.path.relpath(PYTHON, ROOT)  # what run_script's python is, seen from the working folder ROOT
    description = text.split("\noptions:")[0].split("\n\n", 1)[1]  # after the usage block, before the flags
    examples = [line.strip() for line in description.splitlines() if line.startswith("    ") and ".py " in line
                and not line.strip().startswith(("-", "'"))]
    assert examples, text
    for line in examples:
        words = shlex.split(line.split("#")[0].split(";")[0].rstrip("\\"))
        words = [w for w in words if "=" not in w or w.startswith("-")]  # CUDA_VISIBLE_DEVICES=1 ...
        assert words[0] in (python, os.path.join(os.path.dirname(python), "torchrun")), line
        assert "python 0" not in line.replace(python, "") and (ROOT / [w for w in words if w.endswith(".py")][0]
                                                               ).is_file(), line
    if script != "deploy.py":  # the epilog's command for every setting runs as printed
        listed = " ".join(text.split()).split("All settings: ")[1].split()[:2]
        assert listed == [python, "params.py"], listed
        proc = subprocess.run(listed, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0 and "--encoder" in proc.stdout, proc.stderr[-500:]


def test_rerun_replaces_the_script_own_flags_with_their_values(monkeypatch):
    import os
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(params, "RUN", {"script": "03_predict.py",
                                        "args": ["--images", "a.jpg", "b.jpg", "--folds", "0,1", "--retune"]})
    monkeypatch.setattr(params, "GIVEN", {"preset": "demo", "input": "in put"})
    python = os.path.relpath(sys.executable, ROOT)
    assert params.rerun("--folds", "0") == (f"`{python} 03_predict.py --images a.jpg b.jpg --retune --folds 0 "
                                            "--preset demo --input 'in put'`")
    assert params.rerun(drop=("--retune", "--images")) == f"`{python} 03_predict.py --folds 0,1 --preset demo " \
                                                         "--input 'in put'`"
    assert params.without_flags(["--folds=3", "--retune"], ["--folds"]) == ["--retune"]


def test_help_does_not_import_torch():
    """--help answers before the heavy imports (torch takes seconds to import)."""
    for script in ("01_prepare.py", "02_train.py", "03_predict.py", "04_submit.py", "05_export.py"):
        code = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
                f"try:\n    runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n"
                "except SystemExit:\n    pass\n"
                "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
        proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert proc.stderr.strip().endswith("NO TORCH"), (script, proc.stderr[-500:])


def test_every_field_has_a_description():
    docs = {name: setting.help for name, setting in params.SETTINGS.items()}
    assert set(docs) == {f.name for f in params.fields(params.Params)}
    assert all(len(text) > 8 for text in docs.values()), [k for k, t in docs.items() if len(t) <= 8]


# --- masks for any photos ---
def test_photos_in_a_folder_need_only_the_fold_models(prepared, tmp_path):
    root, out = prepared
    run_script("02_train.py", "--fold", "0", "--input", root, "--output", out, *TINY_FLAGS, "--epochs", "1")
    models = tmp_path / "models"  # the fold model alone: no folds.csv, no tuning.json, no input folder
    (models / "demo" / "fold0").mkdir(parents=True)
    shutil.copy(files.fold_dir(out, "demo", 0) / files.BEST, models / "demo" / "fold0" / files.BEST)
    photos = tmp_path / "my photos"
    photos.mkdir()
    test_images = sorted((root / files.TEST).glob("*.jpg"))
    shutil.copy(test_images[0], photos / "car one.jpg")
    Image.open(test_images[1]).resize((300, 200)).save(photos / "car two.png")  # another size and format
    (photos / "notes.txt").write_text("not a photo")
    shutil.copy(test_images[2], tmp_path / "single.jpg")
    masks = tmp_path / "masks"
    proc = run_script("03_predict.py", "--preset", "demo", "--output", models, "--height", "64", "--width", "96",
                      "--images", photos, str(tmp_path / "sing*.jpg"), "--images-out", masks, "--workers", "0")
    assert "3 photo(s) with 1 fold model(s), TTA hflip, threshold 0.500 (no tuning.json)" in proc.stdout
    rows = pd.read_csv(masks / "masks.csv", keep_default_na=False)
    assert rows.img.tolist() == ["car one.jpg", "car two.png", "single.jpg"]
    for name, (h, w) in (("car one", (160, 240)), ("car two", (200, 300)), ("single", (160, 240))):
        mask = np.array(Image.open(masks / f"{name}_mask.png")) > 0
        assert mask.shape == (h, w)
        code = rows.rle_mask[rows.img.str.startswith(name)].iloc[0]
        assert np.array_equal(rle.decode(code, (h, w)), mask)
        assert Image.open(masks / f"{name}_overlay.jpg").size == (w, h)


@pytest.mark.parametrize("sources, message", [(["nowhere.jpg"], "no such file or folder"),
                                              (["*.nothing"], "*.nothing: matches no photo")])
def test_photos_that_are_not_there_are_one_line(prepared, sources, message):
    root, out = prepared
    proc = run_script("03_predict.py", "--output", out, "--preset", "demo", "--images", *sources, check=False)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr


# --- progress in a log ---
def test_progress_written_to_a_file_is_a_few_plain_lines(prepared):
    root, out = prepared
    proc = run_script("02_train.py", "--fold", "0", "--input", root, "--output", out, *TINY_FLAGS)  # stderr: a pipe
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert len(proc.stderr.splitlines()) < 20, proc.stderr


def test_progress_off_a_terminal_is_silent_when_quick_and_a_line_every_so_often_when_slow(monkeypatch, capsys):
    """On tqdm's clock, made to advance 0.03 s per item: the same lines on any machine, however loaded."""
    import tqdm.std
    from lib import progress as progress_mod
    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # no monitor thread on the real clock
    list(progress_mod.progress(range(50), "quick"))
    assert capsys.readouterr().err == ""  # a step shorter than LOG_EVERY_S writes nothing (errors stay one line)
    monkeypatch.setattr(progress_mod, "LOG_EVERY_S", 0.05)
    for _ in progress_mod.progress(range(6), "slow", leave=True):
        now[0] += 0.03
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 6 and all(line.startswith("slow:") for line in lines) and "\r" not in "".join(lines)
    assert "6/6" in lines[-1]


# --- TensorBoard and the curve ---
def test_tensorboard_missing_is_one_line_before_anything_is_written(prepared, monkeypatch):
    from lib.train import setup
    root, out = prepared
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    p, _ = params.parse("t", [str(a) for a in ["--input", root, "--output", out, *TINY_FLAGS, "--tensorboard"]])
    with pytest.raises(PipelineError, match="pip install tensorboard"):
        setup(p, 0, Dist())
    assert not files.fold_dir(out, "demo", 0).exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the optional tensorboard package "
                    "is not installed (pip install tensorboard)")
def test_tensorboard_logs_steps_epochs_and_overlays(prepared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root, out = prepared
    run_script("02_train.py", "--fold", "0", "--input", root, "--output", out, *TINY_FLAGS, "--tensorboard")
    events = EventAccumulator(str(files.run_dir(out, "demo") / "tensorboard" / "fold0"),
                              size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train_step", "lr", "loss/train", "loss/val", "dice/val"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("dice/val")] == [1, 2]
    assert "val/overlays" in " ".join(tags["images"])


def test_the_curve_is_a_picture_of_every_validated_epoch(prepared):
    root, out = prepared
    run_script("02_train.py", "--fold", "0", "--input", root, "--output", out, *TINY_FLAGS)
    curve = Image.open(files.fold_dir(out, "demo", 0) / files.CURVE)
    assert curve.size == (1100, 400) and curve.mode in ("RGB", "RGBA")
    assert params.PRESETS["demo"]["val_every"] < params.PRESETS["demo"]["epochs"] / 2  # the demo's curve: points
