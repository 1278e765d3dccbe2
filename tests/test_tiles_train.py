"""Tiled training (issue 27): the tile cache 01 writes (lib/tilecache.py), the tiles 02 samples from it
(lib/data.py), and 02 -> 03 with --tile-size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib import tilecache
from lib.cache import Sources
from lib.data import TileSet, tile_rows, tile_window
from lib.task import Task
from lib.tiles import read_scaled
from params import make_params


def _input(root, sizes=((300, 420), (50, 70))):
    """train/ and train_masks/ with one photo and mask per size (H, W): a disc of foreground in the first, none in
    the second."""
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / f"img{k}.jpg")
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((yy - h // 3) ** 2 + (xx - w // 4) ** 2 < (h // 6) ** 2) if k == 0 else np.zeros((h, w), bool)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "train_masks" / f"img{k}_mask.png")
    return ["img0", "img1"]


def test_the_tile_cache_holds_each_image_at_the_network_scale_and_is_rebuilt_when_a_source_changes(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    ids = _input(root)
    p = make_params(input=str(root), output=str(out), tile_size=64, downscale=2.0, workers=0, mask_suffix="_mask")
    line = tilecache.disk_line(out, ids, [(300, 420), (50, 70)], 2.0, Task.of(p), "_mask", Sources(root))
    assert line.startswith("tile cache: 0.00 GB in ") and "writes 0.00 GB" in line
    assert not out.exists()  # the line is said before anything is written
    tiles = tilecache.open_for(p, ids)
    assert tiles.sizes == [(150, 210), (25, 35)]
    image, _ = read_scaled((root / "train" / "img0.jpg").read_bytes(), root / "train" / "img0.jpg", 2.0)
    assert np.array_equal(tiles.image(0), image) and tiles.mask(0).shape == (150, 210)
    assert len(tiles.points(0)) > 0 and len(tiles.points(1)) == 0
    ys, xs = tiles.points(0).T
    assert (tiles.mask(0)[ys, xs] >= 128).all()
    assert tilecache.disk_bytes(tiles.sizes) == (150 * 210 + 25 * 35) * 4
    before = (out / "cache" / "tiles_2" / "meta.json").stat().st_mtime_ns
    tilecache.open_for(p, ids)  # current: kept
    assert (out / "cache" / "tiles_2" / "meta.json").stat().st_mtime_ns == before
    Image.fromarray(np.zeros((300, 420), np.uint8)).save(root / "train_masks" / "img0_mask.png")
    assert len(tilecache.open_for(p, ids).points(0)) == 0  # the changed mask was cached again


def test_tiles_are_windows_of_the_cache_padded_when_the_image_is_smaller(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    ids = _input(root)
    p = make_params(input=str(root), output=str(out), tile_size=64, downscale=2.0, workers=0, mask_suffix="_mask")
    tiles = tilecache.open_for(p, ids)
    image, mask = TileSet(tiles, 64, 1.0)[(0, 7)]
    assert image.shape == (3, 64, 64) and mask.shape == (1, 64, 64) and mask.max() >= 128  # on the foreground
    image, mask = TileSet(tiles, 64, 1.0)[(1, 7)]  # 25 x 35: reflect-padded; no foreground to centre on
    assert image.shape == (3, 64, 64) and np.array_equal(image[:, :25, :35].permute(1, 2, 0).numpy(), tiles.image(1))
    assert np.array_equal(TileSet(tiles, 64, 0.5)[(0, 3)][0], TileSet(tiles, 64, 0.5)[(0, 3)][0])  # seeded
    assert list(tile_rows(np.array([0, 1]), tiles.sizes, 64)) == [0] * 8 + [1]  # 150 * 210 / 64^2 -> 8 tiles


def test_foreground_tiles_hold_a_foreground_point_and_the_others_are_uniform():
    rng = np.random.default_rng(0)
    points = np.array([[5, 900], [990, 10]], np.int32)
    for _ in range(200):
        top, left, th, tw = tile_window((1000, 1000), 128, points, 1.0, rng)
        assert (th, tw) == (128, 128) and 0 <= top <= 872 and 0 <= left <= 872
        assert any(top <= y < top + th and left <= x < left + tw for y, x in points)
    lefts = [tile_window((1000, 1000), 128, points, 0.0, rng)[1] for _ in range(400)]
    assert min(lefts) < 100 and max(lefts) > 772 and 300 < np.mean(lefts) < 570
    assert tile_window((40, 1000), 128, points[:0], 1.0, rng)[2:] == (40, 128)


@pytest.mark.slow
def test_tiled_training_validates_by_sliding_window_resumes_and_feeds_03(tiny_demo, tmp_path):
    """01 --tile-size builds the tile cache and says its size; 02 trains on tiles and validates whole images by
    sliding window (oof.npz holds maps at the network's scale, recording the tiling); --resume continues, a changed
    tile setting is refused; 03 tunes on that oof.npz without predicting it again and writes maps at that scale."""
    from lib import files, oof, testmaps
    from tests.conftest import run_script
    out = tmp_path / "out"
    flags = ["--input", tiny_demo, "--output", out, "--preset", "demo", "--n-folds", "2", "--workers", "0",
             "--jobs", "1", "--tile-size", "32", "--downscale", "4", "--batch-size", "8", "--val-every", "1",
             "--tta", "none", "--postprocess", "none", "--predict-batch-size", "8"]
    proc = run_script("01_prepare.py", *flags)
    assert "tile cache: 0.00 GB in " in proc.stdout and (out / "cache" / "tiles_4" / "meta.json").exists()
    assert not list((out / "cache").glob("*x*"))  # no network-size image cache with tiles
    proc = run_script("02_train.py", "--fold", "0", *flags, "--epochs", "1")
    assert "96 tiles of 32 px an epoch from 32 train images" in proc.stdout
    fold = files.fold_dir(out, "demo", 0)
    made = oof.load_oof(fold / files.OOF)
    assert made.tiling == {"tile_size": 32, "downscale": 4.0, "tile_overlap": 0.25}
    assert {m.shape for m in made.probs} == {(40, 60)}  # 240 x 160 at 1/4
    proc = run_script("02_train.py", "--fold", "0", *flags, "--epochs", "2", "--resume")
    assert "resumed after epoch 1" in proc.stdout and "epoch 2/2" in proc.stdout
    proc = run_script("02_train.py", "--fold", "0", *flags, "--epochs", "2", "--resume", "--tile-foreground", "0.9",
                      check=False)
    assert proc.returncode == 1 and "--tile-foreground 0.5 -> 0.9" in proc.stderr
    proc = run_script("03_predict.py", *flags, "--folds", "0")
    assert "predicting its out-of-fold maps now" not in proc.stdout
    probs = files.run_dir(out, "demo") / files.TEST_PROBS
    assert {testmaps.read_map(m).shape for m in probs.glob("*.png")} == {(40, 60)}


# --- bad input: one line each, nothing written ---
@pytest.mark.parametrize("script", ["01_prepare.py", "02_train.py"])
@pytest.mark.parametrize("flags,message", [(["--tile-size", "100"], "--tile-size 100 must be 0 (off) or a positive "
                                                                    "multiple of 32"),
                                           (["--tile-size", "64", "--tile-overlap", "0.6"],
                                            "--tile-overlap 0.6 must be in [0, 0.5]"),
                                           (["--tile-size", "64", "--tile-overlap", "-0.1"],
                                            "--tile-overlap -0.1 must be in [0, 0.5]"),
                                           (["--tile-size", "64", "--tile-foreground", "1.5"],
                                            "--tile-foreground 1.5 must be in [0, 1]")])
def test_bad_tile_settings_in_01_and_02_are_one_line_and_write_nothing(tmp_path, script, flags, message):
    from tests.conftest import run_script
    root = tmp_path / "in"
    _input(root)
    extra = ["--fold", "0"] if script == "02_train.py" else []
    proc = run_script(script, *extra, "--input", root, "--output", tmp_path / "out", *flags, check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_an_image_above_the_limit_is_one_line_in_01_with_tiles_and_nothing_is_written(tmp_path):
    from tests.conftest import run_script
    from tests.test_outputs import png_header_only
    root = tmp_path / "in"
    _input(root)
    big = root / "train" / "img1.jpg"
    big.write_bytes(png_header_only(13400, 13400))  # 180 MP: only its header is ever read
    proc = run_script("01_prepare.py", "--input", root, "--output", tmp_path / "out", "--tile-size", "512",
                      "--downscale", "4", "--workers", "0", "--n-folds", "2", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr  # 01's list of problems: this one
    assert f"{big}: 13400x13400 is 179.6 megapixels, above --max-image-mp 100" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_mask_of_another_size_than_its_image_names_both_in_01_with_tiles(tmp_path):
    from tests.conftest import run_script
    root = tmp_path / "in"
    _input(root)
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(root / "train_masks" / "img1_mask.png")
    proc = run_script("01_prepare.py", "--input", root, "--output", tmp_path / "out", "--tile-size", "64",
                      "--workers", "0", "--n-folds", "2", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "60x40" in proc.stderr and "70x50" in proc.stderr
    assert not (tmp_path / "out").exists()


# --- the large-image demo ---
@pytest.mark.slow
def test_the_aerial_large_demo_has_thin_fences_and_small_poles_and_01_prepares_it_with_tiles(tmp_path):
    """--demo-kind aerial-large: 4 classes in classes.csv, per-class sample rows; fences keep their 2-3 px width
    whatever the photo's size (what resizing loses), poles are small discs; 01 prepares it with --tile-size."""
    from demo.aerial import render
    from lib.task import read_class_colors
    from tests.conftest import run_script
    small, label_small = render(np.random.default_rng([0, 0]), 900, 600)
    _, label_large = render(np.random.default_rng([0, 0]), 3600, 2400)
    assert small.shape == (600, 900, 3) and set(np.unique(label_small)) == {0, 1, 2, 3}
    import cv2
    fence = (label_large == 1).astype(np.uint8)
    inside = cv2.distanceTransform(fence, cv2.DIST_L2, 3)[fence > 0]  # distance to the nearest non-fence pixel
    assert np.median(inside) <= 2  # 2-3 px wide lines in a 3600 x 2400 photo (a 6 px band would give ~2.9)
    n, _, stats, _ = cv2.connectedComponentsWithStats((label_large == 2).astype(np.uint8))
    assert n > 20 and stats[1:, 4].max() <= 11 * 11  # discs of radius <= 5 px
    root = tmp_path / "in"
    proc = run_script("01_prepare.py", "--demo", "--demo-kind", "aerial-large", "--demo-train-cars", "4",
                      "--demo-test-cars", "1", "--demo-width", "640", "--demo-height", "480", "--input", root,
                      "--output", tmp_path / "out", "--classes", "4", "--class-colors", root / "classes.csv",
                      "--tile-size", "128", "--downscale", "2", "--n-folds", "2", "--workers", "0")
    assert "demo data: 4 train + 1 test photos at 640x480" in proc.stdout and "tile cache: " in proc.stdout
    assert read_class_colors(root / "classes.csv")[0] == ("background", "fence", "pole", "building")
    assert (root / "sample_submission.csv").read_text().splitlines()[1:] == [
        f"aerial004_{c},1 1" for c in ("fence", "pole", "building")]


def test_foreground_points_centre_each_class_equally_often():
    """A multi-class target of a large class (buildings) and two thin ones (a 1-px fence, a pole of 9 px): each class
    the image holds gets the same share of the points (the rare ones drawn with repeats); binary keeps its
    foreground pixels; an image without foreground has none."""
    from lib.task import Task
    from lib.tilecache import foreground_points
    target = np.zeros((200, 300), np.uint8)
    target[20:180, 20:150] = 3  # building: 20800 px
    target[100, 160:290] = 1  # fence: 130 px
    target[50:53, 200:203] = 2  # pole: 9 px
    points = foreground_points(target, Task(4), seed=0, n=600)
    classes = target[points[:, 0], points[:, 1]]
    assert np.bincount(classes, minlength=4).tolist() == [0, 200, 200, 200]
    ml = Task(2, multilabel=True)
    bits = np.zeros((50, 60), np.uint8)
    bits[:40, :40] |= 1
    bits[10:12, 10:50] |= 2  # overlaps label 1 on 60 px
    points = foreground_points(bits, ml, seed=0, n=100)
    assert (bits[points[:, 0], points[:, 1]] & 2).sum() // 2 >= 50  # label 2 centred half the time
    binary = np.zeros((20, 20), np.uint8)
    binary[5:8, 5:8] = 255
    assert sorted(map(tuple, foreground_points(binary, Task(1), seed=0))) == [(y, x) for y in range(5, 8)
                                                                              for x in range(5, 8)]
    assert foreground_points(np.zeros((8, 8), np.uint8), Task(4), seed=0).shape == (0, 2)
