"""Settings: every field is a flag, presets apply, unknown flags and bad values are refused."""
import dataclasses
import json

import pytest

import params
from params import PRESETS, Params, make_params, parse


VALID = {"group_regex": "(x)", "height": "64", "width": "64", "demo_width": "64", "demo_height": "64",
         "encoder_weights": "none", "decoder_channels": "64,32,16,16,8", "scale_high": "1.5", "crop_height": "32",
         "crop_width": "32", "tile_size": "64", "tta_modes": "none,vflip", "downscale": "2",
         "tta_scales": "0.75,1"}  # a valid other value


def test_every_field_is_a_flag_and_flags_beat_presets():
    p, _ = parse("t", ["--preset", "demo", "--epochs", "3", "--no-augment", "--lr", "0.01"])
    assert p.epochs == 3 and p.augment is False and p.lr == 0.01
    assert p.encoder == PRESETS["demo"]["encoder"]
    for f in dataclasses.fields(Params):
        flag = "--" + f.name.replace("_", "-")
        value = {bool: None, int: "7", float: "0.5", str: "x"}[type(f.default)]
        if choices := params.SETTINGS[f.name].choices:
            value = next(c for c in choices if c != f.default)
        value = VALID.get(f.name, value)
        args = [flag] if value is None else [flag, value]
        p, _ = parse("t", args)
        assert getattr(p, f.name) == (True if value is None else type(f.default)(value)), f.name


def test_bool_flags_are_not_type_bool():
    p, _ = parse("t", ["--no-augment"])
    assert p.augment is False
    with pytest.raises(SystemExit):
        parse("t", ["--augment", "False"])


@pytest.mark.parametrize("argv", [["--no-such-flag"], ["--epochs", "two"], ["--height", "100"],
                                  ["--threshold", "1.5"], ["--preset", "nope"], ["--tta", "rot45"],
                                      ["--tta-modes", "none,rot45"], ["--tta-modes", ","],
                                  ["--lr", "nan"], ["--lr", "-0.001"], ["--lr", "0"], ["--weight-decay", "-1"],
                                  ["--warmup-epochs", "nan"], ["--seed", "-1"], ["--patience", "-1"],
                                  ["--min-lr-ratio", "2"], ["--grad-clip", "inf"], ["--out", "x"],
                                  ["--bce-weight", "0", "--dice-weight", "0"], ["--cache-budget-gb", "-1"],
                                  ["--demo-kind", "roads"], ["--ema", "1"], ["--ema", "-0.1"],
                                  ["--demo-width", "31"], ["--demo-height", "-1"],
                                  ["--height", "64", "--crop-height", "32", "--no-augment"]])
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse("t", argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1  # one line naming the flag, no usage block


def test_presets_are_valid_and_round_trip(tmp_path):
    for name, overrides in PRESETS.items():
        p = make_params(**overrides)
        params.save(p, tmp_path / f"{name}.json")
        assert params.from_dict(json.loads((tmp_path / f"{name}.json").read_text())) == p
    with pytest.raises(ValueError, match="unknown setting"):
        make_params(not_a_field=1)
    with pytest.raises(ValueError, match="must be int"):
        make_params(epochs="3")
    with pytest.raises(ValueError, match="--demo-kind 'roads' must be one of cars, multiclass"):
        make_params(demo_kind="roads")


def test_a_preset_value_that_does_not_apply_to_the_chosen_arch_is_dropped_not_blamed():
    p, _ = parse("t", ["--preset", "demo", "--arch", "FPN"])  # demo sets Unet decoder widths; FPN has none
    assert p.arch == "FPN" and p.decoder_channels == Params.decoder_channels
    p, _ = parse("t", ["--preset", "demo"])
    assert p.decoder_channels == PRESETS["demo"]["decoder_channels"]


def test_saved_settings_of_another_type_are_refused_not_translated():
    with pytest.raises(ValueError, match="setting 'amp' must be str, got True"):
        params.from_dict({**Params().to_dict(), "amp": True})


def test_every_setting_carries_its_facts():
    assert set(params.SETTINGS) == {f.name for f in dataclasses.fields(Params)}
    for name, setting in params.SETTINGS.items():
        assert setting.stages and setting.stages <= set(params.STAGES), name
        default = getattr(Params, name)
        assert not setting.choices or default in setting.choices, name
        assert setting.range is None or setting.range.problem(name, default) is None, name
    assert params.SETTINGS["lr"].range == params.Range(0, None, False, True)
    assert params.SETTINGS["ema"].range == params.Range(0, 1, True, False)
    assert params.SETTINGS["rle_order"].stages == {"01", "03", "04"} and params.SETTINGS["jobs"].stages == {"02"}
    with pytest.raises(ValueError, match="only one a 02 reads can be resumable"):
        params.Section("03")(0, "a setting 02 does not read", resumable=True)
    with pytest.raises(ValueError, match="give each bound once"):
        params.Section("02")(0, "two lower bounds", low=0, above=0)


def test_the_choices_of_a_setting_are_what_the_code_implements():
    """The modes lib/ implements (TTA pairs, post-processings, RLE orders) are the field's choices, less auto."""
    from lib import postprocess, rle, tta
    assert params.SETTINGS["tta"].choices == ("auto", *tta.MODES)
    assert set(params.SETTINGS["postprocess"].choices) == {"auto", *postprocess.CHOICES}
    assert params.SETTINGS["rle_order"].choices == rle.ORDERS


def test_range_and_choice_checks_come_from_the_fields():
    with pytest.raises(ValueError, match=r"^--ema 1.0 must be in \[0, 1\)$"):
        make_params(ema=1.0)
    with pytest.raises(ValueError, match=r"^--lr 0.0 must be in \(0, inf\]$"):
        make_params(lr=0.0)
    with pytest.raises(ValueError, match=r"^--seed 4294967296 must be in \[0, 4294967295\]$"):
        make_params(seed=2**32)
    with pytest.raises(ValueError, match=r"^--max-image-mp nan must be a finite number$"):
        make_params(max_image_mp=float("nan"))
    with pytest.raises(ValueError, match=r"^--rle-order 'diagonal' must be one of row, column$"):
        make_params(rle_order="diagonal")



@pytest.mark.parametrize("argv,full,folds", [(["--preset", "cpu"], 29, 42), (["--preset", "cpu", "--epochs", "5"], 5, 5),
                                             (["--preset", "demo"], 10, 10), (["--full-epochs", "7"], 7, 40)])
def test_the_full_model_trains_the_presets_full_epochs_unless_epochs_is_given(argv, full, folds):
    """02 --fold full trains --full-epochs (the cpu preset's 29) unless --epochs is on the command line; the fold
    models keep --epochs."""
    p, _ = parse("t", argv)
    assert (params.full_model(p).epochs, p.epochs) == (full, folds)
