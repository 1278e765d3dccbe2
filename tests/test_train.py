"""02_train.py on tiny demo data: outputs, resume after SIGKILL, refusals with clear messages."""
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, TINY_FLAGS, run_script, start_stopped
from lib import files
from lib.folds import fold_digest, read as folds_read
from lib.errors import PipelineError
from lib.model import load_model, read_checkpoint
from lib.oof import load_oof
from lib.runtime import Dist
from lib.train import LOG_COLUMNS, lr_factor, may_change_on_resume


@pytest.fixture
def prepared(tiny_demo, tiny_prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_prepared, out)
    return tiny_demo, out


def train_args(root, out, *extra):
    return ["--input", root, "--output", out, *TINY_FLAGS, *extra]


def test_fold_run_writes_everything(prepared):
    root, out = prepared
    proc = run_script("02_train.py", "--fold", "0", *train_args(root, out))
    assert "fold 0 epoch 2/2" in proc.stdout
    fold = files.fold_dir(out, "demo", 0)
    log = pd.read_csv(fold / files.LOG)
    assert list(log.columns) == LOG_COLUMNS and log.epoch.tolist() == [1, 2]
    assert log.val_dice.between(0, 1).all() and (log.images_per_s > 0).all()
    assert (fold / files.CURVE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = read_checkpoint(fold / files.BEST)
    assert best["val_dice"] == pytest.approx(log.val_dice.max())
    model, p, _ = load_model(fold / files.BEST)
    assert (p.height, p.width, p.encoder) == (64, 96, "resnet18") and not model.training
    oof = load_oof(fold / files.OOF)
    ids, probs = oof.ids, oof.probs.array()
    assert oof.model == best["digest"] and oof.split == best["split"] == fold_digest(folds_read(out), 0)
    split = pd.read_csv(out / "folds.csv", dtype={"id": str})
    assert ids == sorted(split.id[split.fold == 0]) and probs.dtype == np.uint8 and probs.shape[1:] == (64, 96)
    last = read_checkpoint(fold / files.LAST)
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch"} <= set(last) and last["epoch"] == 2
    # an existing run is neither resumed nor overwritten without --resume
    before = (fold / files.LAST).read_bytes()
    again = run_script("02_train.py", "--fold", "0", *train_args(root, out), check=False)
    assert again.returncode == 1 and "--resume" in again.stderr and "Traceback" not in again.stderr
    assert (fold / files.LAST).read_bytes() == before


@pytest.mark.parametrize("ema", [[], ["--ema", "0.9"]], ids=["plain", "ema"])
def test_killed_run_resumes_to_the_same_result(prepared, tmp_path, ema):
    """Bit-exact equality holds on the CPU; CUDA kernels (cuDNN autotuning, atomics) are not bit-reproducible from
    run to run, so this test pins --device cpu on a machine with a GPU too. With --ema the average resumes too."""
    root, out = prepared
    args = ["--fold", "0", *train_args(root, out, "--epochs", "3", "--batch-size", "4", "--device", "cpu", *ema)]
    run_script("02_train.py", *args, "--experiment", "straight")
    # stopped once the background writer has written epoch 1's last.pt (the training loop is into epoch 2), killed
    proc = start_stopped("02_train.py", *args, "--experiment", "killed", at="lib.train:write_checkpoint",
                         name=files.LAST)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = files.fold_dir(out, "killed", 0) / files.LAST
    assert read_checkpoint(last)["epoch"] < 3, "the run finished before it could be killed"
    run_script("02_train.py", *args, "--experiment", "killed", "--resume")
    a, b = (read_checkpoint(files.fold_dir(out, e, 0) / files.BEST) for e in ("straight", "killed"))
    assert a["epoch"] == b["epoch"] and a["val_dice"] == b["val_dice"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    la, lb = (pd.read_csv(files.fold_dir(out, e, 0) / files.LOG) for e in ("straight", "killed"))
    assert la.epoch.tolist() == lb.epoch.tolist() == [1, 2, 3]
    assert np.array_equal(la[["train_loss", "val_loss", "val_dice"]].to_numpy(),
                          lb[["train_loss", "val_loss", "val_dice"]].to_numpy())


def test_ema_validates_and_saves_the_average_without_changing_what_is_learned(prepared):
    """--ema: the raw weights follow the very path they follow without it (CPU: bit-exact); log.csv keeps their val
    Dice beside the average's; model.pt holds the average (for the full model: its last state)."""
    root, out = prepared
    for name, extra in (("plain", []), ("ema", ["--ema", "0.9"])):
        run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "3", "--device", "cpu",
                                                              "--experiment", name, *extra))
    lasts = {e: read_checkpoint(files.fold_dir(out, e, 0) / files.LAST) for e in ("plain", "ema")}
    assert all(torch.equal(lasts["plain"]["model"][k], lasts["ema"]["model"][k]) for k in lasts["plain"]["model"])
    assert "ema" not in lasts["plain"] and int(lasts["ema"]["ema"]["n_averaged"]) > 0
    plain, ema = (pd.read_csv(files.fold_dir(out, e, 0) / files.LOG) for e in ("plain", "ema"))
    assert plain.val_dice_raw.isna().all() and ema.val_dice_raw.tolist() == plain.val_dice.tolist()
    assert ema.val_dice.tolist() != plain.val_dice.tolist()  # the average scores differently
    best = read_checkpoint(files.fold_dir(out, "ema", 0) / files.BEST)
    assert best["val_dice"] == pytest.approx(ema.val_dice.max())
    averaged = lasts["ema"]["ema"]
    if best["epoch"] == 3:
        assert all(torch.equal(best["model"][k], averaged[f"module.{k}"]) for k in best["model"])
    # the full model: no validation, model.pt is the average at the last epoch
    run_script("02_train.py", "--fold", "full", *train_args(root, out, "--epochs", "2", "--device", "cpu",
                                                             "--experiment", "ema", "--ema", "0.9"))
    full = files.fold_dir(out, "ema", files.FULL)
    best, last = read_checkpoint(full / files.BEST), read_checkpoint(full / files.LAST)
    assert all(torch.equal(best["model"][k], last["ema"][f"module.{k}"]) for k in best["model"])
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_validating_more_often_does_not_change_what_is_learned(prepared):
    """--val-every 1 and --val-every 3 train the very same weights (CPU: bit-exact): validation changes nothing that
    training reads (the training loop also puts torch's generator back after it, for networks that draw from it, such
    as timm encoders with stochastic depth)."""
    root, out = prepared
    for every in (1, 3):
        run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "3", "--val-every", str(every),
                                                              "--device", "cpu", "--experiment", f"every{every}"))
    a, b = (read_checkpoint(files.fold_dir(out, f"every{k}", 0) / files.LAST)["model"] for k in (1, 3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [pd.read_csv(files.fold_dir(out, f"every{k}", 0) / files.LOG) for k in (1, 3)]
    assert logs[0].train_loss.tolist() == logs[1].train_loss.tolist()
    assert logs[1].val_dice.isna().tolist() == [True, True, False]


@pytest.mark.parametrize("extra, message", [
    (["--fold", "5"], "outside the split"),
    (["--fold", "0", "--batch-size", "999"], "larger than the"),
    (["--fold", "0", "--encoder", "resnet_nope"], "Wrong encoder name `resnet_nope`, supported encoders: "),
    (["--fold", "0", "--device", "cuda"], "no CUDA GPU"),
    (["--fold", "0", "--lr", "1e30", "--grad-clip", "0", "--epochs", "3"], "loss is"),
])
def test_bad_settings_fail_clearly(prepared, extra, message):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    root, out = prepared
    proc = run_script("02_train.py", *train_args(root, out), *extra, check=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_folds_says_run_prepare(tiny_demo, tmp_path):
    proc = run_script("02_train.py", "--fold", "0", *train_args(tiny_demo, tmp_path), check=False)
    assert proc.returncode == 1 and "01_prepare.py" in proc.stderr


def test_nan_loss_stops_and_leaves_only_finished_checkpoints(prepared):
    root, out = prepared
    proc = run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "3", "--lr", "1e30",
                                                                  "--grad-clip", "0"), check=False)
    assert proc.returncode == 1 and "loss is" in proc.stderr and "Traceback" not in proc.stderr
    failed_epoch = int(re.search(r"loss is \S+ at fold 0 epoch (\d+)", proc.stderr).group(1))
    last = files.fold_dir(out, "demo", 0) / files.LAST
    assert str(last) in proc.stderr
    if last.exists():  # a checkpoint of an epoch that finished before the loss blew up
        assert read_checkpoint(last)["epoch"] == failed_epoch - 1
    assert not list(files.fold_dir(out, "demo", 0).glob(".*tmp*"))


def test_resume_refuses_changed_training_settings(prepared):
    root, out = prepared
    run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "1"))
    proc = run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "1", "--lr", "0.5"),
                      "--resume", check=False)
    assert proc.returncode == 1 and "--lr" in proc.stderr


def test_resume_accepts_a_changed_setting_training_does_not_read(prepared):
    """--postprocess and --rle-order are read by 03 and 04 only: a resumed fold takes them (the hand-kept list of
    resumable settings refused them), and still refuses a changed training setting beside them, naming only it."""
    root, out = prepared
    run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "1"))
    later = ["--postprocess", "none", "--rle-order", "column"]
    refused = run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "1", *later, "--lr", "0.5"),
                         "--resume", check=False)
    assert refused.returncode == 1 and refused.stderr.rstrip().endswith("changed: --lr 0.003 -> 0.5"), refused.stderr
    proc = run_script("02_train.py", "--fold", "0", *train_args(root, out, "--epochs", "1", *later), "--resume")
    assert "resumed after epoch 1" in proc.stdout


def test_the_resume_rule_follows_the_settings_facts():
    """02 --resume may change what training does not read, and what changes only where and how fast it runs."""
    assert may_change_on_resume("postprocess") and may_change_on_resume("rle_order") and may_change_on_resume("tta")
    assert may_change_on_resume("workers") and may_change_on_resume("device") and may_change_on_resume("jobs")
    assert not may_change_on_resume("lr") and not may_change_on_resume("seed") and not may_change_on_resume("height")
    assert not may_change_on_resume("experiment") and not may_change_on_resume("amp")


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10, 0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.01, abs=1e-3)


def test_unsafe_or_corrupt_checkpoints_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil(), "params": {}}, f)
    torch.save({"model": Evil(), "params": {}}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(PipelineError):
            read_checkpoint(p)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(PipelineError, match="corrupt"):
        read_checkpoint(tmp_path / "corrupt.pt")


def test_offline_pretrained_download_says_how_to_run_offline(tmp_path):
    code = ("import params; from lib.model import build_model; from lib.errors import run_main; "
            "run_main(lambda: build_model(params.make_params(encoder='resnet18', encoder_weights='imagenet')))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path), "HF_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 1
    assert "imagenet weights" in proc.stderr and "--encoder-weights none" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_disk_full_while_a_checkpoint_is_written_in_the_background(prepared, monkeypatch, capsys):
    """Checkpoints are written by a background thread; a failed write still stops the run with the file
    named, leaves the previous epoch's last.pt, and no temporary file."""
    import errno

    import params
    from lib import train
    from lib.errors import run_main
    root, out = prepared
    real_write = train.write_checkpoint

    def write(path, state):
        if path.name == files.LAST and state["epoch"] == 2:
            with files.atomic_path(path) as tmp:
                tmp.write_bytes(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, state)

    monkeypatch.setattr(train, "write_checkpoint", write)
    p, _ = params.parse("t", [str(a) for a in train_args(root, out, "--epochs", "3")])
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: train.train_fold(p, 0, Dist()))
    fold = files.fold_dir(out, "demo", 0)
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after what is left of the progress bars
    assert exit_.value.code == 1 and last_line.startswith(f"error: disk full while writing {fold / files.LAST}:")
    assert read_checkpoint(fold / files.LAST)["epoch"] == 1  # the run stopped at the end of epoch 3
    assert not list(fold.glob(".*tmp*"))


def test_out_of_fold_maps_are_stored_as_png_and_read_back_exactly(tmp_path):
    from lib.oof import PngMaps, save_oof
    rng = np.random.default_rng(1)
    maps = np.zeros((5, 64, 96), np.uint8)
    maps[:, 10:50, 20:70] = 255
    maps[:, 9, :] = rng.integers(0, 256, (5, 96))  # a soft edge
    stored = PngMaps.encode(maps)
    assert len(stored.blob) < maps.nbytes / 5  # compressed
    joined = PngMaps.join([PngMaps.encode(maps[:2]), PngMaps.encode(maps[2:2]), PngMaps.encode(maps[2:])])
    save_oof(tmp_path / "oof.npz", [f"a{i}" for i in range(5)], joined, "model", "split")
    oof = load_oof(tmp_path / "oof.npz")
    assert np.array_equal(oof.probs.array(), maps) and (oof.model, oof.split) == ("model", "split")
    assert np.array_equal(oof.probs[3], maps[3]) and len(oof.probs) == 5


@pytest.mark.parametrize("arch, encoder", [("Unet", "tu-resnet18"), ("FPN", "resnet18"), ("unetplusplus", "resnet18")])
def test_any_smp_architecture_and_encoder_builds_offline_without_weights(arch, encoder):
    """smp.create_model: its own encoders and timm's (tu-...), any architecture name smp knows (any case)."""
    import params
    from lib.model import build_model
    extra = {"decoder_channels": "64,32,16,16,8"} if arch.lower() != "fpn" else {}
    p = params.make_params(arch=arch, encoder=encoder, encoder_weights="none", **extra)
    net = build_model(p)
    out = net(torch.zeros(1, 3, 64, 96, dtype=torch.uint8))
    assert out.shape == (1, 1, 64, 96)


@pytest.mark.parametrize("field, value, message", [("arch", "Nope", "Wrong architecture type `Nope`"),
                                                   ("encoder_weights", "foo", "Wrong pretrained weights `foo`")])
def test_names_smp_does_not_know_are_one_line_in_its_words(field, value, message):
    import params
    from lib.model import build_model
    p = params.make_params(**{"encoder": "resnet18", field: value})
    with pytest.raises(PipelineError, match=message) as e:
        build_model(p)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600


def test_resume_with_more_epochs_stretches_the_schedule(prepared):
    """A finished 2-epoch run resumed with --epochs 5 continues on the cosine of a 5-epoch run: epochs 3-5 have the
    learning rates a 5-epoch run has there, ending at lr * min_lr_ratio."""
    root, out = prepared
    base = train_args(root, out)
    run_script("02_train.py", "--fold", "0", *base, "--epochs", "2", "--experiment", "grow")
    fold = files.fold_dir(out, "grow", 0)
    refused = run_script("02_train.py", "--fold", "0", *base, "--epochs", "1", "--experiment", "grow", "--resume",
                         check=False)
    assert refused.returncode == 1 and "--epochs 2 -> 1" in refused.stderr
    proc = run_script("02_train.py", "--fold", "0", *base, "--epochs", "5", "--experiment", "grow", "--resume")
    assert "resumed after epoch 2" in proc.stdout
    run_script("02_train.py", "--fold", "0", *base, "--epochs", "5", "--experiment", "planned")
    grown, planned = (pd.read_csv(files.fold_dir(out, e, 0) / files.LOG) for e in ("grow", "planned"))
    assert grown.epoch.tolist() == [1, 2, 3, 4, 5]
    assert grown.lr.tolist()[2:] == pytest.approx(planned.lr.tolist()[2:])
    assert grown.lr.iloc[-1] == pytest.approx(3e-3 * 0.01) and grown.lr.iloc[2] > grown.lr.iloc[1]
    assert read_checkpoint(fold / files.LAST)["epoch"] == 5
