"""Images that are not 8-bit RGB (lib/imageformat.py): exact round trips of 16-bit PNG/TIFF and N-band TIFF, 8-bit RGB
read as cv2 reads it today, the recorded statistics, the format record's checks, the refusal of a differing image
and the printed command that repairs it, and display (grey, band triple, percentile stretch)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT
from lib import files, imageformat
from lib.errors import PipelineError
from lib.imageformat import RGB8, ImageFormat
from lib.task import Task


def _read(path: Path) -> np.ndarray:
    return imageformat.read_pixels(files.read_bytes(path), path)


def _random(shape, dtype, seed=0) -> np.ndarray:
    high = 65536 if dtype == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


@pytest.mark.parametrize("name,shape,dtype", [
    ("grey16.png", (9, 7, 1), np.uint16), ("grey16.tif", (9, 7, 1), np.uint16),
    ("rgb16.png", (9, 7, 3), np.uint16), ("rgb16.tiff", (9, 7, 3), np.uint16),
    ("bands6.tif", (9, 7, 6), np.uint16), ("bands4.tif", (9, 7, 4), np.uint8), ("grey8.png", (9, 7, 1), np.uint8)])
def test_round_trip_exact(tmp_path, name, shape, dtype):
    image = _random(shape, dtype)
    image[0, 0] = 65535 if dtype == np.uint16 else 255  # the top of the range survives
    imageformat.write_pixels(tmp_path / name, image)
    back = _read(tmp_path / name)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, image)


def test_n_band_tiff_bands_in_order(tmp_path):
    """Band k of a planar 6-band TIFF (written by tifffile itself, (C, H, W)) holds the constant k."""
    import tifffile
    cube = np.stack([np.full((5, 4), 1000 * k, np.uint16) for k in range(6)])
    tifffile.imwrite(tmp_path / "sat.tif", cube, photometric="minisblack", planarconfig="separate")
    image = _read(tmp_path / "sat.tif")
    assert image.shape == (5, 4, 6)
    assert [int(image[0, 0, k]) for k in range(6)] == [0, 1000, 2000, 3000, 4000, 5000]


def test_rgb8_reads_as_cv2_does_today(tmp_path):
    image = _random((12, 10, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    today = cv2.cvtColor(cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(_read(tmp_path / "a.png"), today)


def test_float_tiff_refused(tmp_path):
    import tifffile
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(PipelineError, match=r"f\.tif: float32 values"):
        _read(tmp_path / "f.tif")


def test_measure_statistics():
    a = np.zeros((2, 2, 2), np.uint16)
    a[..., 1] = 40000
    b = np.full((2, 2, 2), 2000, np.uint16)
    fmt = imageformat.measure([(Path("a.png"), a), (Path("b.png"), b)])
    assert (fmt.channels, fmt.dtype) == (2, "uint16")
    assert fmt.mean == pytest.approx((1000.0, 21000.0))
    assert fmt.std == pytest.approx((1000.0, 19000.0))
    normal = fmt.normalise(b)
    assert normal.dtype == np.float32 and normal[0, 0] == pytest.approx((1.0, -1.0))


def test_rgb8_keeps_imagenet_normalisation():
    from lib.model import MEAN, STD
    fmt = imageformat.measure([(Path("a.jpg"), _random((4, 4, 3), np.uint8))])
    assert fmt is RGB8 and fmt.rgb8
    assert fmt.mean == tuple(m * 255 for m in MEAN) and fmt.std == tuple(s * 255 for s in STD)


def test_measure_refuses_mixed_images():
    with pytest.raises(PipelineError, match=r"^b\.png: a 8-bit 1-channel image, but the training images before "
                                            r"it are 16-bit 1-channel; convert it: `.*convert_file"):
        imageformat.measure([(Path("a.png"), np.zeros((2, 2, 1), np.uint16)),
                             (Path("b.png"), np.zeros((2, 2, 1), np.uint8))])
    with pytest.raises(PipelineError, match=r"^c\.tif: a 16-bit 4-channel image, but .* 16-bit 1-channel"):
        imageformat.measure([(Path("a.png"), np.zeros((2, 2, 1), np.uint16)),
                             (Path("c.tif"), np.zeros((2, 2, 4), np.uint16))])


@pytest.mark.parametrize("name,have,want", [
    ("odd.png", ((6, 5, 1), np.uint8), (1, "uint16")),
    ("odd.tif", ((6, 5, 3), np.uint16), (1, "uint16")),
    ("odd8.png", ((6, 5, 1), np.uint16), (3, "uint8"))])
def test_printed_command_repairs(tmp_path, name, have, want):
    """The command in the refusal, run as printed from the project folder, makes the image pass."""
    path = tmp_path / name
    imageformat.write_pixels(path, _random(*have))
    line = imageformat.differs(path, _read(path), want, "the training images")
    assert line is not None and line.startswith(f"{path}: ")
    command = line.split("`")[1]
    subprocess.run(command, shell=True, cwd=ROOT, check=True)
    fixed = _read(path)
    assert imageformat.differs(path, fixed, want, "the training images") is None
    if have[1] == np.uint8 and want[1] == "uint16":  # 8 -> 16 bit keeps the full range: 255 -> 65535
        assert int(fixed.max()) == 257 * int(_random(*have).max())


def test_record_round_trip_and_checks(tmp_path):
    fmt = ImageFormat(2, "uint16", (1.5, 2.5), (3.0, 4.0))
    imageformat.write_record(tmp_path, fmt)
    assert imageformat.read_record(tmp_path) == fmt
    record = json.loads((tmp_path / imageformat.RECORD).read_text())
    record["std"] = [3.0]
    (tmp_path / imageformat.RECORD).write_text(json.dumps(record))
    with pytest.raises(PipelineError, match=r"image_format\.json: damaged: .* re-run 01_prepare\.py"):
        imageformat.read_record(tmp_path)
    (tmp_path / imageformat.RECORD).unlink()
    with pytest.raises(PipelineError, match=r"image_format\.json: missing; run 01_prepare\.py first"):
        imageformat.read_record(tmp_path)


def test_display():
    rgb = _random((4, 4, 3), np.uint8)
    assert imageformat.to_display(rgb) is rgb  # 8-bit RGB shown as it is
    grey = np.arange(100, dtype=np.uint16).reshape(10, 10, 1) * 40 + 20000
    shown = imageformat.to_display(grey)
    assert shown.shape == (10, 10, 3) and shown.dtype == np.uint8
    assert (shown[..., 0] == shown[..., 2]).all()
    assert shown.min() == 0 and shown.max() == 255  # 20000..23960 stretched over the whole 8-bit range
    bands = np.stack([np.full((3, 3), v, np.uint8) for v in (10, 20, 30, 40)], axis=2)
    assert imageformat.to_display(bands, imageformat.parse_bands("3,2,1"))[0, 0].tolist() == [30, 20, 10]
    with pytest.raises(PipelineError, match="only 4 bands"):
        imageformat.to_display(bands, imageformat.parse_bands("5,2,1"))
    with pytest.raises(PipelineError, match="three band numbers"):
        imageformat.parse_bands("1,2")


# --- the model: input channels and normalisation from the format, recorded in its checkpoint ---
def _tiny_params(tmp_path):
    import params
    return params.Params(encoder="resnet18", encoder_weights="none", output=str(tmp_path))


def test_model_takes_the_formats_channels_and_checkpoint_rebuilds_it(tmp_path):
    import torch
    from lib import model as model_mod
    p = _tiny_params(tmp_path)
    fmt = ImageFormat(1, "uint16", (2000.0,), (500.0,))
    net = model_mod.build_model(p, image_format=fmt).eval()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
    x = torch.full((1, 1, 32, 32), 2500, dtype=torch.int32)
    with torch.no_grad():
        assert net(x).shape == (1, 1, 32, 32)
    assert float(net.mean.flatten()[0]) == 2000.0 and float(net.std.flatten()[0]) == 500.0
    path = tmp_path / "fold0" / "model.pt"
    path.parent.mkdir()
    model_mod.write_checkpoint(path, model_mod.checkpoint_state(net, p, task=Task.of(p).record()))
    back, _, ckpt = model_mod.load_model(path)
    assert back.image_format == fmt and ckpt["image_format"]["channels"] == 1
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))


def test_rgb8_model_and_checkpoint_as_before(tmp_path):
    import torch
    from lib import model as model_mod
    p = _tiny_params(tmp_path)
    net = model_mod.build_model(p)
    assert net.image_format is RGB8
    assert torch.equal(net.mean, torch.tensor(model_mod.MEAN).view(1, 3, 1, 1) * 255)
    assert torch.equal(net.std, torch.tensor(model_mod.STD).view(1, 3, 1, 1) * 255)
    assert "image_format" not in model_mod.checkpoint_state(net, p)


# --- through the stages ---
MICRO_FLAGS = ["--preset", "demo", "--height", "64", "--width", "96", "--n-folds", "2", "--workers", "0",
               "--val-every", "1", "--jobs", "1", "--tta", "none", "--predict-batch-size", "8"]


def _micro16(tmp_path, n_train: int = 8, n_test: int = 2):
    from demo import micro
    root = tmp_path / "input"
    micro.generate(root, n_train, n_test, 96, 64, seed=1)
    return root, tmp_path / "out"


def test_micro16_demo_uses_the_16_bit_range(tmp_path):
    """The demo's images are 16-bit and one channel, and 8-bit decoding would crush them to a few grey levels."""
    root, _ = _micro16(tmp_path, 2, 0)
    path = next((root / "train").glob("*.png"))
    image = _read(path)
    assert image.shape[2] == 1 and image.dtype == np.uint16 and image.max() > 600
    crushed = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert len(np.unique(crushed)) <= 5  # what the 8-bit reader made of them


@pytest.mark.slow
def test_16_bit_image_among_others_refused_and_the_named_command_repairs_it(tmp_path):
    from test_failures import error_line
    from conftest import run_script
    root, out = _micro16(tmp_path)
    odd = sorted((root / "train").glob("*.png"))[3]
    imageformat.write_pixels(odd, (_read(odd) // 16).astype(np.uint8))  # an 8-bit one among 16-bit ones
    flags = ["--input", root, "--output", out, *MICRO_FLAGS]
    line = error_line(run_script("01_prepare.py", *flags, check=False))
    assert f"{odd}: a 8-bit 1-channel image, but the training images before it are 16-bit 1-channel" in line
    assert not out.exists() or not any(out.iterdir())  # nothing written
    subprocess.run(line.split("`")[1], shell=True, cwd=ROOT, check=True)
    run_script("01_prepare.py", *flags)
    assert imageformat.read_record(out).dtype == "uint16"


@pytest.mark.slow
def test_n_band_tiff_set_is_prepared_with_its_bands_and_statistics(tmp_path):
    """A 4-band 16-bit TIFF set: 01 records 4 channels with each band's own mean, caches (N, H, W, 4) uint16, and
    --tile-size is refused in one line."""
    from conftest import run_script
    from test_failures import error_line
    root, out = tmp_path / "input", tmp_path / "out"
    for folder in ("train", "train_masks"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        mask = np.zeros((64, 96), np.uint8)
        mask[10 + i:40, 20:60 + i] = 255
        bands = np.stack([np.full((64, 96), 1000 * (k + 1), np.uint16) for k in range(4)], axis=2)
        bands[..., 3] += ((mask > 0) * 500 + rng.integers(0, 50, (64, 96))).astype(np.uint16)
        imageformat.write_pixels(root / "train" / f"s{i}.tif", bands)
        imageformat.write_pixels(root / "train_masks" / f"s{i}_mask.png", mask)
    flags = ["--input", root, "--output", out, *MICRO_FLAGS]
    refused = error_line(run_script("01_prepare.py", *flags, "--tile-size", "64", check=False))
    assert "--tile-size 64: the training images are 16-bit 4-channel; tiles take 8-bit RGB only" in refused
    run_script("01_prepare.py", *flags)
    fmt = imageformat.read_record(out)
    assert (fmt.channels, fmt.dtype) == (4, "uint16")
    assert fmt.mean[:3] == pytest.approx((1000.0, 2000.0, 3000.0)) and fmt.mean[3] > 4000
    images = np.load(files.cache_dir(out, 64, 96) / "images.npy")
    assert images.shape == (6, 64, 96, 4) and images.dtype == np.uint16
    np.testing.assert_array_equal(images[0], _read(root / "train" / "s0.tif"))


@pytest.mark.slow
def test_micro16_end_to_end_beats_the_average_mask(tmp_path):
    """01 -> 02 -> 03 -> 04 on the 16-bit one-channel demo: a model of one input channel, its checkpoint recording
    the format, a test score above the average-mask baseline's; a test image of another format refused in one line
    naming it."""
    import gzip
    from conftest import run_script
    from lib import model as model_mod
    from test_failures import error_line
    root, out = _micro16(tmp_path, 24, 2)
    flags = ["--input", root, "--output", out, *MICRO_FLAGS, "--batch-size", "4", "--epochs", "5"]
    prep = run_script("01_prepare.py", *flags)
    assert "images: 16-bit 1-channel" in prep.stdout
    run_script("02_train.py", "--fold", "all", *flags)
    ckpt = model_mod.read_checkpoint(files.fold_dir(out, "demo", 0) / files.BEST)
    assert ckpt["image_format"]["channels"] == 1 and ckpt["image_format"]["dtype"] == "uint16"
    net, _, _ = model_mod.load_model(files.fold_dir(out, "demo", 0) / files.BEST)
    assert next(m for m in net.modules() if isinstance(m, __import__("torch").nn.Conv2d)).in_channels == 1
    run_script("03_predict.py", *flags)
    done = run_script("04_submit.py", "--baselines", "--score", *flags)
    table = (files.run_dir(out, "demo") / files.COMPARISON).read_text()
    rows = {r.split("|")[1].strip(): r.split("|") for r in table.splitlines() if r.startswith("| ")}
    baseline = float(rows["average mask, global"][5])
    ours = float(next(v for k, v in rows.items() if k.startswith("submission"))[5])
    assert ours > baseline + 0.05, table
    assert "test Dice" in done.stdout
    with gzip.open(files.run_dir(out, "demo") / "submission.csv.gz", "rt") as f:
        assert len(f.read().splitlines()) == 3
    photo = tmp_path / "rgb.png"
    imageformat.write_pixels(photo, _random((64, 96, 3), np.uint8))
    line = error_line(run_script("03_predict.py", "--images", photo, "--images-out", tmp_path / "masks", *flags,
                                 check=False))
    assert f"{photo}: a 8-bit 3-channel image, but the training images are 16-bit 1-channel" in line
    tiled = error_line(run_script("03_predict.py", *flags, "--tile-size", "64", check=False))
    assert "--tile-size 64: the training images are 16-bit 1-channel; tiles take 8-bit RGB only" in tiled
    refused = error_line(run_script("05_export.py", *flags, check=False))
    assert "its models take 16-bit 1-channel images; ONNX export (05_export.py, deploy.py) takes 8-bit RGB" in refused
    assert not (files.run_dir(out, "demo") / "export").exists()


@pytest.mark.slow
def test_multilabel_on_16_bit_one_channel_images_end_to_end(tmp_path):
    """Overlapping labels on 16-bit one-channel images, 01 -> 04: the multi-label demo's photos turned into 16-bit
    grey PNGs (each RGB channel weighted so the labels' tints stay apart, values up to 16320); a one-channel model,
    a threshold and minimum area per label tuned out-of-fold and shown, a row per test image and label."""
    import gzip
    from conftest import run_script
    from demo import labels
    from lib import model as model_mod, rle
    root, out = tmp_path / "input", tmp_path / "out"
    labels.generate(root, 8, 2, 96, 64, seed=3)
    for photo in [*(root / "train").glob("*.jpg"), *(root / "test").glob("*.jpg")]:
        rgb = cv2.imread(str(photo), cv2.IMREAD_COLOR)[..., ::-1].astype(np.uint16)
        imageformat.write_pixels(photo.with_suffix(".png"), (rgb @ np.array([40, 20, 4], np.uint16))[..., None])
        photo.unlink()
    sample = root / "sample_submission.csv"
    sample.write_text(sample.read_text().replace(".jpg_", ".png_"))
    flags = ["--input", root, "--output", out, *MICRO_FLAGS, "--classes", "3", "--multilabel", "--batch-size", "4",
             "--epochs", "1"]
    prep = run_script("01_prepare.py", *flags)
    assert "images: 16-bit 1-channel" in prep.stdout and "task: 3 overlapping labels (1, 2, 3)" in prep.stdout
    run_script("02_train.py", "--fold", "all", *flags)
    ckpt = model_mod.read_checkpoint(files.fold_dir(out, "demo", 0) / files.BEST)
    assert ckpt["image_format"]["channels"] == 1 and ckpt["image_format"]["dtype"] == "uint16"
    assert ckpt["task"]["multilabel"] is True
    predicted = run_script("03_predict.py", *flags)
    assert "per label: threshold, min area, OOF Dice" in predicted.stdout
    tuning = json.loads((files.run_dir(out, "demo") / files.TUNING).read_text())
    assert len(tuning["label_thresholds"]) == len(tuning["label_min_areas"]) == 3
    run_script("04_submit.py", "--score", *flags)
    with gzip.open(files.run_dir(out, "demo") / "submission.csv.gz", "rt") as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    assert [r[0] for r in rows] == [line.split(",")[0] for line in sample.read_text().splitlines()]
    assert [r[0] for r in rows[1:4]] == ["ml008.png_1", "ml008.png_2", "ml008.png_3"]
    for row in rows[1:]:
        rle.validate(row[1], (64, 96))


@pytest.mark.parametrize("shape,dtype", [((5, 6, 1), np.uint8), ((5, 6, 1), np.uint16), ((5, 6, 3), np.uint8),
                                         ((5, 6, 3), np.uint16), ((5, 6, 4), np.uint8), ((5, 6, 4), np.uint16)])
def test_png_header_kind_is_what_decoding_gives(tmp_path, shape, dtype):
    """01's survey reads a PNG's kind from its header (no decode): the same (channels, dtype) ``read_pixels`` gives."""
    path = tmp_path / "a.png"
    imageformat.write_pixels(path, _random(shape, dtype))
    assert imageformat.header_kind(path.read_bytes()[:26]) == imageformat.kind_of(_read(path))


def test_survey_keeps_8_bit_sets_rgb_and_refuses_a_16_bit_one_among_them(tmp_path):
    grey, rgb, deep = tmp_path / "g.png", tmp_path / "c.jpg", tmp_path / "d.png"
    imageformat.write_pixels(grey, _random((5, 6, 1), np.uint8))
    cv2.imwrite(str(rgb), _random((5, 6, 3), np.uint8))
    imageformat.write_pixels(deep, _random((5, 6, 1), np.uint16))
    assert imageformat.survey([grey, rgb]) is RGB8  # as before: grey PNGs among colour ones are read as RGB
    assert imageformat.survey([grey]).channels == 1  # an all-grey set keeps its one channel
    with pytest.raises(PipelineError, match=r"c\.jpg: a 8-bit 3-channel image, but the training images before it "
                                            r"are 16-bit 1-channel"):
        imageformat.survey([deep, rgb])
