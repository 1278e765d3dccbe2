"""demo.cars: the Kaggle layout, masks and RLE, determinism, view-dependent silhouettes, difficulty."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from demo import cars as demo
from lib import rle
from lib.errors import PipelineError

W, H = 480, 320
N_TRAIN, N_TEST = 3, 1
CAR_ID = re.compile(r"[0-9a-f]{12}")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    summary = demo.generate(root, N_TRAIN, N_TEST, W, H, seed=0, workers=1)
    assert summary["train_images"] == 16 * N_TRAIN and summary["test_images"] == 16 * N_TEST
    return root


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P", f"{path}: mode {im.mode}"
        assert im.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
        return np.array(im)


def images_of(root: Path, folder: str) -> dict[str, list[Path]]:
    """car id -> its 16 images in view order."""
    cars: dict[str, list[Path]] = {}
    for p in sorted((root / folder).glob("*.jpg")):
        cars.setdefault(p.stem.rsplit("_", 1)[0], []).append(p)
    return cars


def bbox_aspect(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


def test_layout(data: Path):
    assert {p.name for p in data.iterdir()} == {"train", "train_masks", "train_masks.csv", "metadata.csv", "test",
                                                "test_masks", "sample_submission.csv"}
    for images, masks, n_cars in (("train", "train_masks", N_TRAIN), ("test", "test_masks", N_TEST)):
        cars = images_of(data, images)
        assert len(cars) == n_cars and all(CAR_ID.fullmatch(c) for c in cars)
        for car, paths in cars.items():
            assert [p.name for p in paths] == [f"{car}_{v:02d}.jpg" for v in range(1, 17)]
        expected_masks = {f"{p.stem}_mask.gif" for paths in cars.values() for p in paths}
        assert {p.name for p in (data / masks).iterdir()} == expected_masks  # no temp files left either
    assert not set(images_of(data, "train")) & set(images_of(data, "test"))


def test_sample_submission_lists_the_test_images(data: Path):
    lines = (data / "sample_submission.csv").read_text().splitlines()
    assert lines[0] == "img,rle_mask"
    names = [line.split(",")[0] for line in lines[1:]]
    assert names == sorted(p.name for p in (data / "test").glob("*.jpg"))
    assert all(line.endswith(",1 1") for line in lines[1:])


def test_metadata(data: Path):
    lines = (data / "metadata.csv").read_text().splitlines()
    assert lines[0] == "id,year,make,model,trim1,trim2"
    rows = [line.split(",") for line in lines[1:]]
    assert all(len(r) == 6 and 2000 < int(r[1]) < 2020 for r in rows)
    assert {r[0] for r in rows} == set(images_of(data, "train")) | set(images_of(data, "test"))


def test_masks_are_binary_palette_gifs_the_size_of_their_image(data: Path):
    for images, masks in (("train", "train_masks"), ("test", "test_masks")):
        for p in sorted((data / images).glob("*.jpg")):
            image = cv2.imread(str(p))
            mask = read_mask(data / masks / f"{p.stem}_mask.gif")
            assert image.shape == (H, W, 3) and mask.shape == (H, W)
            assert set(np.unique(mask).tolist()) == {0, 1}
            area = mask.mean()
            assert 0.03 < area < 0.6, f"{p.name}: car covers {area:.2f} of the frame"
            assert not (mask[0].all() or mask[-1].all() or mask[:, 0].all() or mask[:, -1].all())


def test_train_masks_csv_decodes_to_the_gifs(data: Path):
    lines = (data / "train_masks.csv").read_text().splitlines()
    assert lines[0] == "img,rle_mask"
    rows = dict(line.split(",") for line in lines[1:])
    assert sorted(rows) == sorted(p.name for p in (data / "train").glob("*.jpg"))
    for name, code in rows.items():
        mask = read_mask(data / "train_masks" / f"{name[:-4]}_mask.gif")
        np.testing.assert_array_equal(rle.decode(code, (H, W)), mask.astype(bool), err_msg=name)


def test_same_seed_same_bytes_whatever_the_workers(data: Path, tmp_path: Path):
    demo.generate(tmp_path, N_TRAIN, N_TEST, W, H, seed=0, workers=2)
    ours = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    assert ours == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in ours:
        assert (data / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_other_seed_other_data(data: Path, tmp_path: Path):
    demo.generate(tmp_path, 1, 0, W, H, seed=1, workers=1)
    (other,) = images_of(tmp_path, "train")
    assert other not in images_of(data, "train")
    first = sorted((data / "train").glob("*_01.jpg"))[0]
    assert (tmp_path / "train" / f"{other}_01.jpg").read_bytes() != first.read_bytes()
    assert not (tmp_path / "test").exists()


def test_silhouette_depends_on_the_view_the_same_way_for_every_car(data: Path):
    for car, paths in images_of(data, "train").items():
        masks = [read_mask(data / "train_masks" / f"{p.stem}_mask.gif") for p in paths]
        aspect = [bbox_aspect(m) for m in masks]  # index 0 is view 01
        for side, end in ((4, 0), (12, 8)):  # views 05 / 13 are sides, 01 / 09 front and back
            assert aspect[side] > 1.7 * aspect[end], (car, aspect)
            assert masks[side].sum() > 1.2 * masks[end].sum(), car
        assert aspect[2] > 1.3 * aspect[0] and aspect[4] > 1.1 * aspect[2], (car, aspect)  # 3/4 views between


def test_some_car_is_coloured_like_the_background(data: Path):
    """The paint (median car pixel: windows and tyres are a minority) against the mean background."""
    distances = []
    for car, paths in images_of(data, "train").items():
        paint, background = [], []
        for p in paths:
            image = cv2.imread(str(p)).astype(float)
            mask = read_mask(data / "train_masks" / f"{p.stem}_mask.gif").astype(bool)
            paint.append(np.median(image[mask], 0))
            background.append(image[~mask].mean(0))
        distances.append(float(np.linalg.norm(np.mean(paint, 0) - np.mean(background, 0))))
    assert min(distances) < 30, distances  # car 0 (every fourth car) is white or silver
    assert max(distances) > 60, distances


def test_average_mask_is_a_weak_baseline(data: Path):
    masks = np.stack([read_mask(p).astype(bool) for p in sorted((data / "train_masks").glob("*.gif"))])
    average = masks.mean(0) > 0.5
    dice = [2 * (average & m).sum() / (average.sum() + m.sum()) for m in masks]
    assert 0.5 < np.mean(dice) < 0.9


def test_render_view():
    spec = demo.car_spec(np.random.default_rng(0))
    image, mask = demo.render_view(spec, 5, 240, 160, np.random.default_rng(1))
    assert image.shape == (160, 240, 3) and image.dtype == np.uint8
    assert mask.shape == (160, 240) and mask.dtype == bool and mask.any()
    again, _ = demo.render_view(spec, 5, 240, 160, np.random.default_rng(1))
    np.testing.assert_array_equal(image, again)
    with pytest.raises(ValueError, match="view"):
        demo.render_view(spec, 17, 240, 160, np.random.default_rng(1))


def test_refuses_a_folder_holding_other_files(tmp_path: Path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "0123456789ab_01.jpg").write_bytes(b"x")
    with pytest.raises(PipelineError, match="0123456789ab_01.jpg"):
        demo.generate(tmp_path, 1, 0, W, H, workers=1)


@pytest.mark.parametrize("kind,flags,expected", [
    ("cars", [], (1918, 1280)), ("aerial-large", [], (6000, 4000)), ("multilabel", [], (480, 320)),
    ("micro16", [], (384, 256)), ("aerial-large", ["--demo-width", "2400"], (2400, 4000)),
    ("multiclass", ["--demo-width", "480", "--demo-height", "320"], (480, 320))])
def test_each_demo_kind_has_its_own_size_unless_given(kind, flags, expected):
    """--demo-width/--demo-height 0 (the default) take the kind's own size: the large-image demo is 6000 x 4000."""
    import demo as demo_pkg
    from params import parse
    p, _ = parse("t", ["--demo-kind", kind, *flags])
    assert demo_pkg.size(p) == expected
