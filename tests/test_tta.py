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


def test_auto_picks_the_mode_that_scores_best(tiny_demo, tiny_prepared, tmp_path):
    from lib import folds as folds_mod
    from lib.cache import open_for
    from lib.predict import Ensemble, tune
    from lib.runtime import Precision
    out = tmp_path / "out"
    shutil.copytree(tiny_prepared, out)
    p = params.make_params(**{**params.PRESETS["demo"], "input": str(tiny_demo), "output": str(out), "height": 64,
                              "width": 96, "n_folds": 2, "workers": 0, "postprocess": "none",
                              "tta_modes": "none,hflip,vflip,d4"})
    split = folds_mod.read(out)
    cache = open_for(p, list(split.id), 64, 96)
    oracle = _BiasedOracle(cache, cache.rows(list(split.id)))
    cpu = torch.device("cpu")
    ens = Ensemble([oracle, oracle], [0, 1], [{"digest": "oracle"}] * 2, p, cpu, Precision.for_device(cpu, "off"),
                   BINARY, channels_last=False)
    tuning = tune(p, split, ens)
    pooled = {s["tta"]: s["dice"] for s in tuning.scores if s["name"].endswith("out-of-fold")}
    assert set(pooled) == {"none", "hflip", "vflip"}  # d4 left out: 64 x 96 is not square
    assert tuning.tta == "vflip" and tuning.tta_asked == "auto:none,hflip,vflip,d4"
    assert pooled["vflip"] > 0.97 and pooled["vflip"] > max(pooled["none"], pooled["hflip"]) + 0.05, pooled
