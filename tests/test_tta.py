"""The TTA menu (lib/tta.py): every mode is exact on an equivariant model, D4 keeps to square inputs, and 03's auto
picks the mode that scores best out-of-fold."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from lib import tta
from lib.errors import PipelineError
from lib.task import BINARY, Task
import params

SQUARE, WIDE = (8, 8), (8, 12)


def _identity_model(channels: int):
    """A model that returns its input channels as logits: equivariant under every flip and rotation."""
    return lambda x: x[:, :channels]


@pytest.mark.parametrize("task", [BINARY, Task(3)], ids=["binary", "multiclass"])
@pytest.mark.parametrize("mode", tta.CHOICES)
def test_each_mode_is_exact_on_an_identity_equivariant_model(mode, task):
    for h, w in [SQUARE] + ([WIDE] if mode not in tta.SQUARE_ONLY else []):
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w)) * 4
        model = _identity_model(task.channels)
        plain, averaged = tta.predict_proba(model, x, "none", task), tta.predict_proba(model, x, mode, task)
        assert averaged.shape == plain.shape
        assert torch.allclose(averaged, plain, atol=1e-6, rtol=0)  # float sums of equal terms: an ulp or two
        assert np.array_equal(task.to_maps(averaged), task.to_maps(plain))  # the stored maps: the same bytes


@pytest.mark.parametrize("mode, group", [("hflip", ["h"]), ("vflip", ["v"]), ("hvflip", ["h", "v", "r180"]),
                                         ("d4", ["h", "v", "r90", "t"])])
def test_the_average_is_equivariant_under_the_modes_group(mode, group):
    """Of any model (a random convolution here), the mode's average commutes with each transform of its group."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    moves = {"h": lambda t: t.flip(-1), "v": lambda t: t.flip(-2), "r180": lambda t: t.flip(-2, -1),
             "r90": lambda t: torch.rot90(t, 1, (-2, -1)), "t": lambda t: t.transpose(-2, -1)}
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        prob = tta.predict_proba(conv, x, mode, BINARY)
        for g in group:
            assert torch.allclose(tta.predict_proba(conv, moves[g](x), mode, BINARY), moves[g](prob), atol=1e-6), g
        if mode != "d4":  # a smaller group: not invariant under the 90-degree turn
            assert not torch.allclose(tta.predict_proba(conv, moves["r90"](x), mode, BINARY), moves["r90"](prob),
                                      atol=1e-4)


def test_d4_keeps_to_square_inputs():
    assert tta.candidates("auto", "none,hflip,d4", 64, 64) == ["none", "hflip", "d4"]
    assert tta.candidates("auto", "none,hflip,d4", 64, 96) == ["none", "hflip"]  # left out where it cannot run
    assert tta.candidates("vflip", "none", 64, 96) == ["vflip"]
    with pytest.raises(PipelineError, match=r"--tta d4 .* square .* 64 x 96.*hvflip"):
        tta.candidates("d4", "none,hflip", 64, 96)
    with pytest.raises(PipelineError, match="unknown rot45"):
        tta.candidates("auto", "none,rot45", 64, 64)
    with pytest.raises(PipelineError, match="none runs at the non-square"):
        tta.candidates("auto", "d4", 64, 96)
    with pytest.raises(ValueError, match="square"):
        tta.predict_proba(_identity_model(1), torch.zeros(1, 3, 8, 12), "d4", BINARY)
    assert params.SETTINGS["tta"].choices == ("auto", *tta.CHOICES)
    assert tta.candidates("auto", params.Params().tta_modes, 1280, 1920) == ["none", "hflip"]  # Carvana's, as before
    assert tta.asked_text("auto", "none,hflip") == "auto:none,hflip" and tta.asked_text("d4", "none") == "d4"


class _BiasedOracle(torch.nn.Module):
    """Knows every image's truth (and its mirrors'), but adds +BIAS to the upper half of its logits and -BIAS to the
    lower: wrong in both halves alone, exact once averaged with its up/down mirror (vflip cancels the bias)."""
    BIAS, SURE = 8.0, 4.0

    def __init__(self, cache, rows):
        super().__init__()
        self.truth = {}
        for r in rows:
            image, mask = cache.item(int(r))
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            m = torch.from_numpy(mask.astype(np.float32) / 255)[None]
            for flip in ([], [-1], [-2], [-2, -1]):
                key = (x.flip(flip) if flip else x).contiguous().numpy().tobytes()
                self.truth[key] = m.flip(flip) if flip else m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([(self.truth[xi.contiguous().numpy().tobytes()] - 0.5) * 2 * self.SURE for xi in x])
        h = x.shape[-2]
        bias = torch.full((h, 1), self.BIAS)
        bias[h // 2:] = -self.BIAS
        return logits + bias


def _tune_with_oracle(oracle_class, tiny_demo, tiny_prepared, tmp_path, **settings):
    """(tuning, {tta mode: pooled out-of-fold Dice}) of 03's tuning of the tiny demo with two copies of an oracle
    network (``oracle_class(cache, rows)``) as the fold models, under the demo preset and ``settings``."""
    from lib import folds as folds_mod
    from lib.cache import open_for
    from lib.predict import Ensemble, tune
    from lib.runtime import Precision
    out = tmp_path / "out"
    shutil.copytree(tiny_prepared, out)
    p = params.make_params(**{**params.PRESETS["demo"], "input": str(tiny_demo), "output": str(out), "height": 64,
                              "width": 96, "n_folds": 2, "workers": 0, "postprocess": "none", **settings})
    split = folds_mod.read(out)
    cache = open_for(p, list(split.id), 64, 96)
    oracle = oracle_class(cache, cache.rows(list(split.id)))
    cpu = torch.device("cpu")
    ens = Ensemble([oracle, oracle], [0, 1], [{"digest": "oracle"}] * 2, p, cpu, Precision.for_device(cpu, "off"),
                   BINARY, channels_last=False)
    tuning = tune(p, split, ens)
    return tuning, {s["tta"]: s["dice"] for s in tuning.scores if s["name"].endswith("out-of-fold")}


def test_auto_picks_the_mode_that_scores_best(tiny_demo, tiny_prepared, tmp_path):
    tuning, pooled = _tune_with_oracle(_BiasedOracle, tiny_demo, tiny_prepared, tmp_path,
                                       tta_modes="none,hflip,vflip,d4")
    assert set(pooled) == {"none", "hflip", "vflip"}  # d4 left out: 64 x 96 is not square
    assert tuning.tta == "vflip" and tuning.tta_asked == "auto:none,hflip,vflip,d4"
    assert pooled["vflip"] > 0.97 and pooled["vflip"] > max(pooled["none"], pooled["hflip"]) + 0.05, pooled


# --- multi-scale TTA (--tta-scales) ---
def _smooth_images(n: int, h: int, w: int) -> torch.Tensor:
    """(n, 3, h, w) uint8 pictures of slow waves: bilinear resizing changes them by a grey level or so."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    waves = [torch.sin((k + 1) * yy + 1.5 * c * xx + k) for k in range(n) for c in range(3)]
    return (127.5 + 120 * torch.stack(waves).reshape(n, 3, h, w)).round().to(torch.uint8)


class _SizeRecorder:
    """An identity-ish model (logits from the first channels of the uint8 picture) that notes each input size."""
    def __init__(self, channels: int):
        self.channels, self.sizes = channels, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return (x[:, :self.channels].float() - 127.5) / 64


@pytest.mark.parametrize("task", [BINARY, Task(3)], ids=["binary", "multiclass"])
def test_each_scale_gives_the_same_map_on_an_identity_model(task):
    """The round trip: resized by each scale (sides rounded to multiples of 32), predicted and resized back, an
    identity model's probabilities are those at scale 1 up to interpolation; softmax's classes still sum to 1."""
    x = _smooth_images(2, 64, 96)
    model = _SizeRecorder(task.channels)
    plain = tta.predict_proba(model, x, "hflip", task)
    assert model.sizes == [(64, 96)] * 2
    for mode in ("hflip@0.75,1,1.25", "none@0.5", "hflip@1.5"):
        model.sizes.clear()
        scaled = tta.predict_proba(model, x, mode, task)
        assert scaled.shape == plain.shape and scaled.dtype == plain.dtype
        assert (scaled - plain).abs().max() < 0.03, mode
        assert all(h % 32 == 0 and w % 32 == 0 for h, w in model.sizes), model.sizes
        if not task.binary:
            assert torch.allclose(scaled.sum(1), torch.ones(2, 64, 96), atol=1e-5)
    assert tta.scaled_size(64, 96, 0.75) == (64, 64)  # 48 x 72: 1.5 x 32 rounds to the even 2, 2.25 x 32 to 2
    assert tta.scaled_size(64, 96, 1.25) == (64, 128) and tta.scaled_size(64, 96, 0.5) == (32, 64)
    assert tta.scaled_size(60, 90, 1) == (60, 90)  # scale 1: the input itself
    # scale 1 alone is the flip mode itself: the same name and the same bytes
    assert tta.fixed("hflip", "1.0") == "hflip" and tta.split("hflip") == ("hflip", (1.0,))
    assert torch.equal(tta.predict_proba(model, x, "hflip@1", task), plain)


def test_scales_are_recorded_in_the_mode_and_the_asked_text():
    assert tta.candidates("auto", "none,hflip", 64, 96, "1.25,0.75,1") == [
        "none", "hflip", "none@0.75,1,1.25", "hflip@0.75,1,1.25"]  # scale 1 first: ties go to it
    assert tta.candidates("hflip", "none", 64, 96, "1,0.75") == ["hflip@0.75,1"]
    assert tta.candidates("auto", "none,hflip", 64, 96, "1") == ["none", "hflip"]  # the default: as before
    assert tta.asked_text("auto", "none,hflip", "1") == "auto:none,hflip"
    assert tta.asked_text("auto", "none,hflip", "1.0,0.75") == "auto:none,hflip@0.75,1"
    assert tta.asked_text("vflip", "none", "1.5") == "vflip@1.5"
    assert tta.split("hvflip@0.5,2") == ("hvflip", (0.5, 2.0))
    with pytest.raises(PipelineError, match="unknown TTA mode 'rot@1'"):
        tta.split("rot@1")


@pytest.mark.parametrize("scales, message", [("1,0", "must list scales > 0"), ("-1", "must list scales > 0"),
                                             ("a", "not a comma-separated list"), ("1,nan", "must list scales > 0")])
def test_bad_scales_are_refused_by_the_settings(scales, message, capsys):
    with pytest.raises(SystemExit):
        params.parse("t", ["--tta-scales", scales])
    assert message in capsys.readouterr().err


def test_a_scale_under_32_pixels_is_refused_with_the_command_that_repairs_it():
    with pytest.raises(PipelineError, match=r"--tta-scales 0.2,1: scale 0.2 makes the 64 x 96 network input 0 x 32 "
                                            r".* at least 32\); run .*--tta-scales 1") as e:
        tta.candidates("auto", "none,hflip", 64, 96, "0.2,1")
    repair = str(e.value).rsplit("run ", 1)[1].strip("`").split()
    fixed = repair[repair.index("--tta-scales") + 1]
    assert tta.candidates("auto", "none,hflip", 64, 96, fixed) == ["none", "hflip"]
    with pytest.raises(PipelineError, match="scale 0.4 makes the 32 x 32"):  # a tile of 32: 0.4 x 32 rounds to 0
        tta.candidates("hflip", "none", 32, 32, "0.4")


class _ScaleShyOracle(torch.nn.Module):
    """Knows each image's truth (found as the nearest known image after resizing back), sure of it at any size but its
    own; at its own size it adds -BIAS to the lower half (there it finds nothing): averaged with another scale the
    lower half comes back."""
    BIAS, SURE = 40.0, 4.0

    def __init__(self, cache, rows):
        super().__init__()
        pairs = [cache.item(int(r)) for r in rows]
        self.images = torch.stack([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1).float()
                                   for i, _ in pairs])
        self.truths = torch.stack([torch.from_numpy(m.astype(np.float32) / 255)[None] for _, m in pairs])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.images.shape[-2:]
        back = torch.nn.functional.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False)
        nearest = torch.cdist(back.flatten(1), self.images.flatten(1)).argmin(1)
        truth = torch.nn.functional.interpolate(self.truths[nearest], size=tuple(x.shape[-2:]), mode="nearest")
        logits = (truth - 0.5) * 2 * self.SURE
        if tuple(x.shape[-2:]) == (h, w):
            logits[..., h // 2:, :] -= self.BIAS
        return logits


def test_auto_picks_the_scales_where_they_score_best(tiny_demo, tiny_prepared, tmp_path):
    tuning, pooled = _tune_with_oracle(_ScaleShyOracle, tiny_demo, tiny_prepared, tmp_path, gating="off",
                                       tta_modes="none", tta_scales="0.5,1")
    assert set(pooled) == {"none", "none@0.5,1"}
    assert tuning.tta == "none@0.5,1" and tuning.tta_asked == "auto:none@0.5,1" and tuning.gating_asked == "off"
    assert pooled["none@0.5,1"] > 0.9 and pooled["none@0.5,1"] > pooled["none"] + 0.05, pooled


@pytest.mark.slow
def test_03_records_the_scales_and_refuses_one_too_small_before_writing(trained, tmp_path):
    """03 --tta-scales: tuning.json and test_probs/meta.json name the mode with its scales, so scale 1 alone is
    another tuning and the maps are refused (--replace); a scale leaving a side under 32 is one line, nothing written,
    and its command runs."""
    import json
    import shlex
    from conftest import run_script
    from test_failures import args_for, clone
    from lib import files
    out = clone(trained, tmp_path, with_maps=False)
    run = files.run_dir(out, "demo")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    bad = run_script("03_predict.py", *args_for(trained.root, out, "--tta", "hflip", "--tta-scales", "0.4,1"),
                     check=False)
    assert bad.returncode != 0 and "scale 0.4 makes the 32 x 64 network input 0 x 32" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (run / files.TEST_PROBS).exists()
    repair = shlex.split(bad.stderr.strip().rsplit("run ", 1)[1].strip("`"))
    assert repair[repair.index("--tta-scales") + 1] == "1" and repair[1] == "03_predict.py"
    run_script(*repair[1:])
    assert json.loads((run / files.TEST_PROBS / files.PROBS_META).read_text())["tta"] == "hflip"

    run_script("03_predict.py", *args_for(trained.root, out, "--tta", "hflip", "--tta-scales", "1.5,1", "--replace"))
    tuning = json.loads((run / files.TUNING).read_text())
    meta = json.loads((run / files.TEST_PROBS / files.PROBS_META).read_text())
    assert tuning["tta"] == meta["tta"] == "hflip@1,1.5" and tuning["tta_asked"] == "hflip@1,1.5"
    again = run_script("03_predict.py", *args_for(trained.root, out, "--tta", "hflip"), check=False)
    assert again.returncode != 0 and "holds maps from other models or settings" in again.stderr
    assert json.loads((run / files.TUNING).read_text())["tta"] == "hflip"  # tuned again for scale 1


@pytest.mark.parametrize("task", [BINARY, Task(3)], ids=["binary", "multiclass"])
def test_05_exports_the_scales_into_the_onnx_graph(task):
    """05's graph holds the resizing of every scale: onnxruntime gives torch's probabilities."""
    from types import SimpleNamespace
    import onnxruntime as ort
    from lib import export
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, task.channels, 3, padding=1)
    ens = SimpleNamespace(models=[torch.nn.Sequential(_Float(), conv)], task=task, size=(64, 96))
    mode = "hflip@0.75,1,1.25"
    x = _smooth_images(2, 64, 96)
    with torch.no_grad():
        ours = export.Averaged(ens, mode)(x).numpy()
    theirs = ort.InferenceSession(export.onnx_bytes(ens, mode)).run(None, {"images": x.numpy()})[0]
    assert theirs.shape == ours.shape == (2, task.channels, 64, 96)
    assert np.abs(theirs - ours).max() < 1e-5


class _Float(torch.nn.Module):
    """uint8 pictures -> float in [0, 1] (the models' normalisation, in short)."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255
