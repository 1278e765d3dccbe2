"""The GPU code paths, run on a CPU as far as one allows: bf16 autocast, the fp16 GradScaler path, torch.compile
(inductor), DataLoader worker processes, and one training step and one prediction of the default full-size recipe
(Unet-resnet34 at 1280 x 1920). They run on a GPU machine as well (benchmarks/results/gpu.md)."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import params
from conftest import TINY_FLAGS, run_script
from lib import files, tta
from lib.model import read_checkpoint
from lib.task import BINARY
from lib.runtime import Dist, Precision, use_compile
from lib.train import evaluate, setup, train_epoch


@pytest.fixture
def prepared(tiny_demo, tiny_prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_prepared, out)
    return tiny_demo, out


def tiny_run(root, out, **overrides):
    """A Run of fold 0 on the tiny data that trains on its first batch only (one optimiser step)."""
    values = {**params.PRESETS["demo"], "input": str(root), "output": str(out), "height": 64, "width": 96,
              "n_folds": 2, "workers": 0, "batch_size": 4, "predict_batch_size": 4, "experiment": "paths"}
    run = setup(params.make_params(**{**values, **overrides}), 0, Dist())
    run.train_loader = [next(iter(run.train_loader))]
    run.val_loader = [next(iter(run.val_loader))]
    run.val_rows = run.val_rows[:4]
    run.epoch = 1
    return run


def weights(run) -> dict:
    return {k: v.detach().clone() for k, v in run.net.state_dict().items()}


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


@pytest.mark.parametrize("amp, dtype, scaled", [("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)])
def test_autocast_and_the_gradient_scaler_train_on_cpu(prepared, amp, dtype, scaled):
    run = tiny_run(*prepared, amp=amp)
    assert run.precision.enabled and run.precision.dtype == dtype
    assert run.precision.scaler.is_enabled() is scaled  # fp16 needs the scaler; bf16 does not
    with run.precision.autocast(run.device):
        assert run.forward(next(iter(run.train_loader))[0][:1]).dtype == dtype
    before = weights(run)
    steps = 0
    for _ in range(4):  # the scaler skips steps whose gradients overflow, and lowers its scale
        loss, n = train_epoch(run)
        steps += 1
        if changed(before, weights(run)):
            break
    assert np.isfinite(loss) and n == 4
    assert changed(before, weights(run)), f"no optimiser step taken in {steps} tries"
    if scaled:
        assert run.precision.scaler.get_scale() <= 2.0 ** 16
    ev = evaluate(run)
    assert 0 <= ev.dice <= 1 and ev.probs.array().shape == (4, 64, 96) and ev.probs.array().dtype == np.uint8


def test_amp_auto_is_bf16_on_gpus_and_on_cpus_with_bf16_hardware():
    from lib.runtime import cpu_has_bf16
    cpu = Precision.for_device(torch.device("cpu"), "auto")
    assert cpu.enabled == cpu_has_bf16() and (not cpu.enabled or cpu.dtype == torch.bfloat16)
    assert use_compile("auto", torch.device("cpu")) is False and use_compile("auto", torch.device("cuda")) is True
    if torch.cuda.is_available():
        p = Precision.for_device(torch.device("cuda"), "auto")
        assert p.enabled and p.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def test_compiled_model_trains_and_evaluates_like_eager(prepared):
    """torch.compile (inductor on CPU) for one step and one evaluation: the same loss and maps as eager."""
    # float32 in both: bf16 autocast (--amp auto on a CPU with bf16 hardware) rounds differently in inductor's fused kernels
    eager, compiled = tiny_run(*prepared, compile="off", amp="off"), tiny_run(*prepared, compile="on", amp="off")
    assert compiled.forward is not compiled.model and eager.forward is eager.model
    losses = [train_epoch(r)[0] for r in (eager, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    a, b = evaluate(eager), evaluate(compiled)
    assert np.abs(a.probs.array().astype(int) - b.probs.array()).max() <= 1 and b.dice == pytest.approx(a.dice, abs=1e-3)


def test_training_decodes_in_loader_worker_processes(prepared):
    """--cache off: every JPEG and mask decoded in 2 DataLoader worker processes, as on a GPU machine at full size;
    the same run as reading the image cache in the training process."""
    root, out = prepared
    args = ["--fold", "0", "--input", root, "--output", out, *TINY_FLAGS]
    cached = run_script("02_train.py", *args, "--experiment", "cached")
    decoded = run_script("02_train.py", *args, "--experiment", "decoded", "--cache", "off", "--workers", "2")
    assert "on cpu" in cached.stdout and "on cpu" in decoded.stdout
    logs = [pd.read_csv(files.fold_dir(out, e, 0) / files.LOG) for e in ("cached", "decoded")]
    assert np.array_equal(logs[0][["train_loss", "val_loss", "val_dice"]].to_numpy(),
                          logs[1][["train_loss", "val_loss", "val_dice"]].to_numpy())
    a, b = (read_checkpoint(files.fold_dir(out, e, 0) / files.BEST)["model"] for e in ("cached", "decoded"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_full_size_recipe_takes_a_training_step_and_predicts(prepared):
    """The defaults of params.py (Unet-resnet34 at 1280 x 1920, batch 8 split to 1 here) on the CPU: one step, one
    hflip prediction at full size. The tiny images are resized up to the network size."""
    root, out = prepared
    defaults = params.Params()
    assert (defaults.height, defaults.width, defaults.encoder) == (1280, 1920, "resnet34")
    run = setup(params.make_params(input=str(root), output=str(out), encoder_weights="none", batch_size=1,
                                   workers=0, experiment="full", n_folds=2, cache="off"), 0, Dist())
    assert run.cache.size == (1280, 1920) and not run.cache.cached  # decoded at full size, as on the real data
    run.train_loader = [next(iter(run.train_loader))]
    run.epoch = 1
    before = weights(run)
    loss, n = train_epoch(run)
    assert np.isfinite(loss) and n == 1 and changed(before, weights(run))
    run.net.eval()
    image = next(iter(run.val_loader))[0][:1].contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), run.precision.autocast(run.device):
        prob = tta.predict_proba(run.net, image, "hflip", BINARY)
    maps = BINARY.to_maps(prob)
    assert maps.shape == (1, 1280, 1920) and maps.dtype == np.uint8
