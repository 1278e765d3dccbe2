"""demo.scenes: the multi-class demo's layout, labels, classes.csv, per-class sample submission, scene groups,
determinism, and a task that colour alone does not solve but that is learnable."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from demo import scenes as ds
from lib.errors import PipelineError
from lib.layout import CARVANA_ID as CAR_VIEW

W, H = 160, 96
N_TRAIN, N_TEST = 3, 1
C = len(ds.CLASSES)
ID = re.compile(r"scene\d{3}_\d{2}")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    summary = ds.generate(root, N_TRAIN, N_TEST, W, H, seed=0, workers=1)
    assert summary["train_images"] == 16 * N_TRAIN and summary["test_images"] == 16 * N_TEST
    return root


def ids_in(root: Path, folder: str) -> list[str]:
    return sorted(p.name[: -len(ds.IMAGE_EXT)] for p in (root / folder).glob(f"*{ds.IMAGE_EXT}"))


def read_label(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L", f"{path}: mode {im.mode}"
        return np.array(im)


def read_set(root: Path, images: str, masks: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) float32 RGB images and (N, H, W) labels of a folder pair, in id order."""
    ids = ids_in(root, images)
    x = np.stack([cv2.imread(str(root / images / f"{i}{ds.IMAGE_EXT}"))[..., ::-1] for i in ids]).astype(np.float32)
    y = np.stack([read_label(root / masks / f"{i}{ds.MASK_EXT}") for i in ids])
    return x, y


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over the C classes of Dice (1 where a class is in neither)."""
    scores = []
    for c in range(C):
        p, t = pred == c, truth == c
        total = p.sum() + t.sum()
        scores.append(1.0 if total == 0 else 2 * (p & t).sum() / total)
    return float(np.mean(scores))


def test_layout(data: Path):
    assert {p.name for p in data.iterdir()} == {"train", "train_masks", "test", "test_masks", "classes.csv",
                                                "sample_submission.csv"}
    for images, masks, n in (("train", "train_masks", N_TRAIN), ("test", "test_masks", N_TEST)):
        ids = ids_in(data, images)
        assert len(ids) == 16 * n and all(ID.fullmatch(i) for i in ids)
        assert {p.name for p in (data / images).iterdir()} == {f"{i}.jpg" for i in ids}
        assert {p.name for p in (data / masks).iterdir()} == {f"{i}.png" for i in ids}  # no temp files either
    assert ids_in(data, "train")[0] == "scene000_01" and ids_in(data, "test")[0] == f"scene{N_TRAIN:03d}_01"


def test_labels_are_class_indices_and_every_class_is_there(data: Path):
    fractions = []
    for images, masks in (("train", "train_masks"), ("test", "test_masks")):
        x, y = read_set(data, images, masks)
        assert x.shape[1:] == (H, W, 3) and y.shape[1:] == (H, W) and y.dtype == np.uint8
        assert y.max() < C
        fractions.append(np.bincount(y.ravel(), minlength=C) / y.size)
    train, test = fractions
    assert (test > 0).all(), test
    assert (train > 0.02).all() and train[ds.BACKGROUND] == train.max() < 0.8, train  # no class negligible


def test_classes_csv(data: Path):
    with open(data / "classes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["name", "r", "g", "b"]
    assert [(r[0], tuple(map(int, r[1:]))) for r in rows[1:]] == [(c.name, c.rgb) for c in ds.CLASSES]
    names = [r[0] for r in rows[1:]]
    assert len(names) == C >= 4 and names[0] == "background" and len(set(names)) == C
    assert all(re.fullmatch(r"[a-z]+", n) for n in names)  # so <image-id>_<class-name> splits at the last "_"
    assert len({tuple(r[1:]) for r in rows[1:]}) == C  # distinct overlay colours


def test_sample_submission_is_per_class(data: Path):
    lines = (data / "sample_submission.csv").read_text().splitlines()
    assert lines[0] == "img,rle_mask"
    rows = [line.split(",") for line in lines[1:]]
    test_ids = ids_in(data, "test")
    assert len(rows) == len(test_ids) * (C - 1)
    assert [r[0] for r in rows] == [f"{i}_{c.name}" for i in test_ids for c in ds.CLASSES[1:]]
    assert rows[0][0] == f"scene{N_TRAIN:03d}_01_road"
    assert all(r[1] == "1 1" for r in rows)
    assert {r[0].rsplit("_", 1)[0] for r in rows} == set(test_ids)


def test_scenes_are_groups_of_tiles_that_fit_together(data: Path):
    for folder in ("train", "test"):
        groups: dict[str, list[str]] = {}
        for i in ids_in(data, folder):
            groups.setdefault(re.match(ds.GROUP_REGEX, i).group(1), []).append(i)
            assert CAR_VIEW.fullmatch(i).group("car") == re.match(ds.GROUP_REGEX, i).group(1)  # Carvana's rule agrees
        assert all(len(tiles) == ds.TILES for tiles in groups.values())
    assert not {i.split("_")[0] for i in ids_in(data, "train")} & {i.split("_")[0] for i in ids_in(data, "test")}
    # neighbouring tiles continue each other: labels agree across their shared edge about as often as across the
    # last two rows or columns inside a tile, and far more often than against another scene's tile
    label = {i: read_label(data / "train_masks" / f"{i}.png") for i in ids_in(data, "train")}
    pairs = [(k, k + 1) for k in range(1, 17) if k % 4] + [(k, k + 4) for k in range(1, 13)]  # right, below

    def agreement(a: np.ndarray, b: np.ndarray, right: bool) -> float:
        return float(np.mean(a[:, -1] == b[:, 0] if right else a[-1] == b[0]))

    seams, inside, across = [], [], []
    for a, b in pairs:
        tile, right = label[f"scene000_{a:02d}"], b == a + 1
        seams.append(agreement(tile, label[f"scene000_{b:02d}"], right))
        inside.append(agreement(tile[:, :-1] if right else tile[:-1], tile[:, 1:] if right else tile[1:], right))
        across.append(agreement(tile, label[f"scene001_{b:02d}"], right))
    assert np.mean(seams) > np.mean(inside) - 0.02 and np.mean(across) < np.mean(seams) - 0.15, (seams, inside, across)


def test_same_seed_same_bytes_whatever_the_workers(data: Path, tmp_path: Path):
    ds.generate(tmp_path, N_TRAIN, N_TEST, W, H, seed=0, workers=2)
    ours = sorted(p.relative_to(data) for p in data.rglob("*") if p.is_file())
    assert ours == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in ours:
        assert (data / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_other_seed_other_scene(data: Path, tmp_path: Path):
    ds.generate(tmp_path, 1, 0, W, H, seed=1, workers=1)
    assert (tmp_path / "train_masks" / "scene000_01.png").read_bytes() != (
        data / "train_masks" / "scene000_01.png").read_bytes()
    assert not (tmp_path / "test").exists()
    assert (tmp_path / "sample_submission.csv").read_text() == "img,rle_mask\n"


def test_content_does_not_depend_on_the_size():
    scene = ds.scene_spec(np.random.default_rng([5, 0]), 2 / 3)
    _, small = ds.render_tile(scene, 1, 2, 150, 100, np.random.default_rng(0))
    _, large = ds.render_tile(scene, 1, 2, 300, 200, np.random.default_rng(0))
    assert np.mean(large[1::2, 1::2] == small) > 0.9  # equal but at edges (one small pixel, two large ones)
    share = [np.bincount(y.ravel(), minlength=C) / y.size for y in (small, large)]
    assert np.abs(share[0] - share[1]).max() < 0.02, share


def test_colour_alone_is_better_than_the_majority_class_but_far_from_perfect(data: Path):
    """Per-pixel nearest class-mean colour (means from train, scored on test) against the majority class."""
    x_train, y_train = read_set(data, "train", "train_masks")
    x_test, y_test = read_set(data, "test", "test_masks")
    means = np.stack([x_train[y_train == c].mean(0) for c in range(C)])  # (C, 3)
    nearest = (((x_test[..., None, :] - means) ** 2).sum(-1)).argmin(-1)
    majority = np.full_like(y_test, np.bincount(y_train.ravel()).argmax())
    by_colour, baseline = mean_dice(nearest, y_test), mean_dice(majority, y_test)
    assert baseline < 0.2 and by_colour > baseline + 0.15 and by_colour < 0.6, (by_colour, baseline)


def test_refuses_files_of_another_generation(tmp_path: Path):
    ds.generate(tmp_path, 1, 0, 96, 64, seed=0, workers=1)
    (tmp_path / "train" / "scene009_01.jpg").write_bytes(b"")
    with pytest.raises(PipelineError, match="scene009_01.jpg"):
        ds.generate(tmp_path, 1, 0, 96, 64, seed=0, workers=1)
    with pytest.raises(ValueError):
        ds.generate(tmp_path, 0, 1, 96, 64)


def test_prepare_writes_the_multiclass_demo_and_keeps_kinds_apart(tmp_path: Path):
    flags = ["--input", tmp_path / "in", "--output", tmp_path / "out", "--demo-width", "96", "--demo-height", "64",
             "--demo-train-cars", "2", "--demo-test-cars", "1", "--workers", "0"]
    proc = run_script("01_prepare.py", "--demo", "--demo-kind", "multiclass", *flags, check=False)  # later checks:
    assert "demo data: 2 train + 1 test scenes (16 tiles each) at 96x64" in proc.stdout, proc.stdout + proc.stderr
    assert (tmp_path / "in" / "DEMO").read_text() == "synthetic demo data written by 01_prepare.py --demo " \
                                                     "--demo-kind multiclass\n"
    assert len(list((tmp_path / "in" / "train_masks").glob("*.png"))) == 32
    proc = run_script("01_prepare.py", "--demo", *flags, check=False)  # cars over multiclass without --force
    assert proc.returncode != 0 and "another --demo-kind" in proc.stdout + proc.stderr
    assert (tmp_path / "in" / "classes.csv").exists()
