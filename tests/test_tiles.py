"""Sliding-window prediction (lib/tiles.py): the grid, the blending weights, and tiled against whole-image
prediction."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import geometry, tiles
from lib.model import build_model
from lib.predict import Ensemble, predict_probabilities, tile_predictor
from lib.runtime import Precision
from lib.task import Task
from params import make_params


@pytest.mark.parametrize("length,tile,overlap", [(1000, 256, 0.25), (257, 256, 0.5), (4000, 512, 0.0),
                                                 (640, 128, 0.5), (96, 96, 0.3)])
def test_starts_cover_the_axis_with_the_overlap(length, tile, overlap):
    s = tiles.starts(length, tile, overlap)
    assert s[0] == 0 and s[-1] == length - tile
    steps = np.diff(s)
    assert (steps > 0).all() and (steps <= tile * (1 - overlap)).all()
    covered = np.zeros(length, bool)
    for x in s:
        covered[x:x + tile] = True
    assert covered.all()


def test_starts_pinned():
    assert tiles.starts(1000, 256, 0.25) == [0, 186, 372, 558, 744]
    assert tiles.starts(512, 256, 0.0) == [0, 256]
    with pytest.raises(ValueError):
        tiles.starts(100, 128, 0.25)


def test_gaussian_weights_peak_in_the_centre_and_never_vanish():
    w = tiles.gaussian_weights(64, 96)
    assert w.shape == (64, 96) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0, abs=1e-6) and w.min() >= tiles.MIN_WEIGHT
    assert np.allclose(w, w[::-1]) and np.allclose(w, w[:, ::-1])
    assert w[32, 48] > w[32, 70] > w[32, 95]


def test_small_axes_are_padded_like_whole_images():
    assert tiles.tile_shape(100, 1000, 256) == (128, 256)
    assert tiles.padded_shape(100, 1000, 256) == (128, 1000)
    image = np.arange(100 * 150 * 3, dtype=np.uint8).reshape(100, 150, 3)
    padded, (top, left) = tiles.pad_for_tiles(image, 256)
    assert padded.shape == (128, 160, 3)
    assert np.array_equal(padded, geometry.to_net(image, 128, 160))
    assert np.array_equal(padded[top:top + 100, left:left + 150], image)


def test_a_pixelwise_predictor_is_stitched_exactly():
    """A predictor that looks at each pixel alone gives the same value whatever tile covers it: any error in the grid,
    the weights or the crop shows."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 530, 3), dtype=np.uint8)

    def per_pixel(batch: np.ndarray) -> np.ndarray:
        return batch.transpose(0, 3, 1, 2).astype(np.float32) / 255

    out = tiles.sliding_window(per_pixel, image, 128, 0.25, batch=5)
    assert out.shape == (3, 300, 530) and out.dtype == np.float32
    assert np.allclose(out, image.transpose(2, 0, 1) / 255, atol=1e-6)


def test_a_tile_that_is_not_a_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        tiles.sliding_window(lambda b: b, np.zeros((64, 64, 3), np.uint8), 100, 0.25, 4)


def _ensemble(classes: int) -> Ensemble:
    torch.manual_seed(0)
    p = make_params(encoder="resnet18", encoder_weights="none", decoder_channels="32,16,16,16,16", classes=classes,
                    height=128, width=160)
    model = build_model(p).eval()
    return Ensemble([model], [0], [{}], p, torch.device("cpu"), Precision.for_device(torch.device("cpu"), "off"),
                    Task.of(p), channels_last=False)


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("tile", [160, 256])
def test_tiled_and_whole_image_prediction_agree(classes, tile):
    """With --tile-size at least the image's size the sliding window is one window over the image padded as
    whole-image prediction pads it, so the two give the same maps (binary and multi-class, with TTA)."""
    torch.set_num_threads(1)
    ens = _ensemble(classes)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)  # network size 128 x 160
    net = geometry.to_net(image, 128, 160)
    whole = predict_probabilities(ens, torch.from_numpy(net).permute(2, 0, 1)[None], "hflip")[0].numpy()
    whole = np.stack([geometry.from_net(c, 100, 150) for c in whole])
    tiled = tiles.sliding_window(tile_predictor(ens, "hflip"), image, tile, 0.25, batch=2)
    assert tiled.shape == whole.shape == (ens.task.channels, 100, 150)
    assert np.abs(tiled - whole).max() < 1e-5


def test_overlapping_tiles_stay_close_to_the_whole_image():
    """Smaller overlapping tiles see less context, so they differ from the whole image, but blended they stay close
    (an error in placement would give differences of the order of the maps themselves)."""
    torch.set_num_threads(1)
    ens = _ensemble(1)
    yy, xx = np.mgrid[0:192, 0:256]
    image = np.stack([(xx % 64) * 4, (yy % 48) * 5, (xx + yy) % 256], axis=-1).astype(np.uint8)
    whole = predict_probabilities(ens, torch.from_numpy(image).permute(2, 0, 1)[None], "none")[0].numpy()
    tiled = tiles.sliding_window(tile_predictor(ens, "none"), image, 128, 0.5, batch=4)
    shifted = np.roll(whole, 16, axis=-1)
    assert np.abs(tiled - whole).mean() < 0.5 * np.abs(shifted - whole).mean()


# --- 03_predict.py --images by sliding window ---
def _fold_model(out, experiment: str = "demo") -> None:
    """An untrained fold model of the 03 --images tests (weights do not matter to agreement and sizes)."""
    from lib import files
    from lib.model import checkpoint_state, write_checkpoint
    torch.manual_seed(0)
    p = make_params(encoder="resnet18", encoder_weights="none", decoder_channels="32,16,16,16,16", height=96,
                    width=160, experiment=experiment)
    folder = files.fold_dir(out, experiment, 0)
    folder.mkdir(parents=True)
    write_checkpoint(folder / files.BEST, checkpoint_state(build_model(p), p, epoch=1, val_dice=0.5,
                                                           task=Task.of(p).record()))


def test_photos_by_sliding_window_get_full_size_masks_agreeing_with_whole_images(tmp_path):
    """03 --images --tile-size: masks at each photo's own size; with the tile covering the photo, the same masks as
    whole-image prediction at the photo's padded size."""
    from PIL import Image
    from tests.conftest import run_script
    _fold_model(tmp_path / "out")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:90, 0:150]
    picture = np.stack([(xx * 3) % 256, (yy * 5) % 256, rng.integers(0, 256, (90, 150))], -1).astype(np.uint8)
    Image.fromarray(picture).save(photos / "a.png")
    common = ["--output", tmp_path / "out", "--experiment", "demo", "--workers", "0", "--device", "cpu",
              "--tta", "none", "--threshold", "0.5", "--postprocess", "none", "--images", photos]
    run_script("03_predict.py", *common, "--images-out", tmp_path / "tiled", "--tile-size", "160")
    run_script("03_predict.py", *common, "--images-out", tmp_path / "whole", "--height", "96", "--width", "160")
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "a_mask.png"))
    whole = np.asarray(Image.open(tmp_path / "whole" / "a_mask.png"))
    assert tiled.shape == whole.shape == (90, 150)
    assert 0 < (whole > 0).mean() < 1  # the comparison is not of two empty (or full) masks
    assert (tiled != whole).mean() < 1e-3  # only pixels within a rounding of the threshold may differ
    run_script("03_predict.py", *common, "--images-out", tmp_path / "small", "--tile-size", "64",
               "--tile-overlap", "0.5", "--downscale", "1.5")
    assert np.asarray(Image.open(tmp_path / "small" / "a_mask.png")).shape == (90, 150)


@pytest.mark.parametrize("flags,message", [(["--tile-size", "100"], "--tile-size 100 must be 0 (off) or a positive "
                                                                    "multiple of 32"),
                                           (["--tile-overlap", "0.6"], "--tile-overlap 0.6 must be in [0, 0.5]"),
                                           (["--downscale", "0.5"], "--downscale 0.5 must be in [1"),
                                           (["--tile-size", "-32"], "--tile-size -32 must be in [0")])
def test_bad_tile_settings_are_one_line_and_write_nothing(tmp_path, flags, message):
    from tests.conftest import run_script
    proc = run_script("03_predict.py", "--output", tmp_path / "out", "--images", tmp_path, *flags, check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_tiling_records_round_trip_and_size_the_maps():
    from lib.tuning import map_size
    t = tiles.Tiling(256, 2.0, 0.25)
    assert tiles.Tiling.from_record(t.record()) == t and tiles.Tiling.from_record({}) is None
    assert tiles.Tiling.of(make_params(tile_size=0)) is None
    assert tiles.Tiling.of(make_params(tile_size=64, downscale=3, tile_overlap=0.5)) == tiles.Tiling(64, 3.0, 0.5)
    with pytest.raises(ValueError):
        tiles.Tiling.from_record({"tile_size": 100, "downscale": 1, "tile_overlap": 0.25})
    assert map_size(Task.of(make_params()), (128, 160), t, (1001, 3000)) == (500, 1500)  # the image at 1/2
    assert map_size(Task.of(make_params(classes=3)), (128, 160), t, (1001, 3000)) == (1500, 1500)  # 3 class maps
    assert map_size(Task.of(make_params()), (128, 160), None, (1001, 3000)) == (128, 160)  # whole images


# --- 03's out-of-fold and test maps by sliding window ---
def _untrained_run(root, out, height: int, width: int, experiment: str = "demo", task_flags: tuple = ()) -> None:
    """folds.csv and the truth cache of ``root`` (01), then an untrained fold model per fold at ``height`` x
    ``width`` recording the split (the weights do not matter to agreement and sizes); ``task_flags``: --classes
    and --class-colors of a multi-class set."""
    from lib import files, folds as folds_mod
    from lib.model import checkpoint_state, write_checkpoint
    from tests.conftest import run_script
    run_script("01_prepare.py", "--input", root, "--output", out, "--preset", "demo", "--n-folds", "2", "--workers",
               "0", "--height", str(height), "--width", str(width), "--cache", "off", *task_flags)
    split = folds_mod.read(out)
    torch.manual_seed(0)
    named = dict(zip([f[2:].replace("-", "_") for f in task_flags[::2]], task_flags[1::2]))
    p = make_params(encoder="resnet18", encoder_weights="none", decoder_channels="32,16,16,16,16", height=height,
                    width=width, experiment=experiment, **{k: int(v) if k == "classes" else str(v)
                                                           for k, v in named.items()})
    for k in range(2):
        folder = files.fold_dir(out, experiment, k)
        folder.mkdir(parents=True)
        write_checkpoint(folder / files.BEST, checkpoint_state(build_model(p), p, epoch=1, val_dice=0.5,
                                                               task=Task.of(p).record(),
                                                               split=folds_mod.fold_digest(split, k)))


def test_tiled_test_maps_agree_with_whole_images_and_submit_at_full_size(tiny_demo, tmp_path):
    """03 --tile-size at least the image (240 x 160, padded 256 x 160 as the models' size): the out-of-fold tuning and
    the test maps are the whole-image ones (maps stored at the image's own size instead of the padded one); tiles
    changed since are refused without --replace; with --downscale 2 the maps are stored at half size and 04 still
    writes full-size masks."""
    from lib import files, rle, testmaps, tuning as tuning_mod
    from lib.submission import read_submission
    from tests.conftest import run_script
    out = tmp_path / "out"
    _untrained_run(tiny_demo, out, 160, 256)
    common = ["--input", tiny_demo, "--output", out, "--preset", "demo", "--workers", "0", "--device", "cpu",
              "--tta", "none", "--postprocess", "none", "--cache", "off", "--predict-batch-size", "4"]
    run = files.run_dir(out, "demo")
    run_script("03_predict.py", *common)
    whole_tuning = tuning_mod.read(run)
    shutil.move(run / files.TEST_PROBS, tmp_path / "whole")
    run_script("03_predict.py", *common, "--tile-size", "256", "--tile-overlap", "0.5")
    tiled_tuning = tuning_mod.read(run)
    assert tiled_tuning.tiling == tiles.Tiling(256, 1.0, 0.5) and whole_tuning.tiling is None
    assert abs(tiled_tuning.oof_dice - whole_tuning.oof_dice) < 1e-3
    names = sorted(n.name for n in (tmp_path / "whole").glob("*.png"))
    assert names and names == sorted(n.name for n in (run / files.TEST_PROBS).glob("*.png"))
    for name in names:
        whole = testmaps.read_map(tmp_path / "whole" / name)
        tiled = testmaps.read_map(run / files.TEST_PROBS / name)
        assert whole.shape == (160, 256) and tiled.shape == (160, 240)
        assert np.abs(geometry.from_net(whole, 160, 240).astype(int) - tiled).max() <= 1
    run_script("04_submit.py", *common)
    masks = dict(read_submission(run / "submission.csv.gz"))
    assert len(masks) == len(names) and rle.decode(next(iter(masks.values())), (160, 240)).shape == (160, 240)
    proc = run_script("03_predict.py", *common, "--tile-size", "64", "--downscale", "2", check=False)
    assert proc.returncode == 1 and "holds maps from other models or settings" in proc.stderr
    run_script("03_predict.py", *common, "--tile-size", "64", "--downscale", "2", "--replace")
    assert testmaps.read_map(run / files.TEST_PROBS / names[0]).shape == (80, 120)
    run_script("04_submit.py", *common, "--tile-size", "64", "--downscale", "2")
    half = dict(read_submission(run / "submission.csv.gz"))
    assert half.keys() == masks.keys()
    key = next(iter(half))
    assert rle.decode(half[key], (160, 240)).shape == (160, 240)


@pytest.mark.slow
def test_multiclass_tiled_maps_agree_with_whole_images_and_submit_per_class(tmp_path):
    """The same agreement for class maps (4 classes of the aerial-large demo, at 240 x 160): tuning by argmax, test
    maps stacked per class at the image's own size, 04's per-class rows."""
    from demo.aerial import generate
    from lib import files, testmaps, tuning as tuning_mod
    from lib.submission import read_submission
    from tests.conftest import run_script
    root, out = tmp_path / "in", tmp_path / "out"
    generate(root, 4, 1, width=240, height=160, workers=0)
    task = ("--classes", "4", "--class-colors", str(root / "classes.csv"))
    _untrained_run(root, out, 160, 256, task_flags=task)
    common = ["--input", root, "--output", out, "--preset", "demo", "--workers", "0", "--device", "cpu", "--tta",
              "none", "--cache", "off", "--predict-batch-size", "4", *task]
    run = files.run_dir(out, "demo")
    run_script("03_predict.py", *common)
    whole_dice = tuning_mod.read(run).oof_dice
    whole = testmaps.read_map(run / files.TEST_PROBS / "aerial004.png")
    run_script("03_predict.py", *common, "--tile-size", "256", "--replace")
    assert abs(tuning_mod.read(run).oof_dice - whole_dice) < 1e-3
    tiled = testmaps.read_map(run / files.TEST_PROBS / "aerial004.png")
    assert whole.shape == (4 * 160, 256) and tiled.shape == (4 * 160, 240)
    whole_at = np.concatenate([geometry.from_net(c, 160, 240) for c in whole.reshape(4, 160, 256)])
    assert np.abs(whole_at.astype(int) - tiled).max() <= 1
    run_script("04_submit.py", *common)
    rows = dict(read_submission(run / "submission.csv.gz"))
    assert sorted(rows) == ["aerial004_building", "aerial004_fence", "aerial004_pole"]
