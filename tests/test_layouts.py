"""Any image-mask dataset (issue 13, binary masks): odd names, PNG/TIF masks, masks without a suffix, instance folders,
groups, column-order RLE, test sets without sample_submission.csv, and images of several sizes end to end."""
from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_script
from lib import files, inputs, layout, rle, submission
from lib.errors import PipelineError

RNG = np.random.default_rng(13)


def write_image(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, data = cv2.imencode(path.suffix.lower() if path.suffix.lower() != ".jpeg" else ".jpg", image)
    assert ok
    path.write_bytes(data.tobytes())


def box(h: int, w: int, k: int = 0) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[h // 4 + k: 3 * h // 4, w // 5: 4 * w // 5 - k] = True
    return mask


def write_mask(path: Path, mask: np.ndarray, high: int = 255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * high).save(path)


# --- names ---
def test_ids_keep_dots_spaces_and_unicode_and_masks_need_no_suffix(tmp_path):
    root = tmp_path / "in"
    names = {"a.b c_é": ".jpg", "x.y": ".PNG", "日本 photo": ".tiff", "plain": ".bmp"}
    for i, (image_id, ext) in enumerate(names.items()):
        write_image(root / "train" / f"{image_id}{ext}", 24, 40)
        # with and without the _mask suffix, in several formats, 0/255 and 0/1
        mask_name = f"{image_id}_mask.png" if i % 2 else f"{image_id}{['.png', '.tif'][i // 2]}"
        write_mask(root / "train_masks" / mask_name, box(24, 40, i), high=255 if i < 3 else 1)
    table, notes = inputs.check_train(root, workers=0)
    assert sorted(table.id) == sorted(names)
    assert table.mask_area.tolist() == [int(box(24, 40, list(names).index(i)).sum()) for i in table.id]
    assert table.car.tolist() == table.id.tolist() and set(table.view) == {0}  # one group per image, no views
    for name in ("a.b c_é.jpg", "x.y.png", "日本 photo.tif", "a.b.c d.JPEG"):
        assert files.image_id(name) == name.rsplit(".", 1)[0]


def test_mask_suffix_setting_names_the_masks(tmp_path):
    root = tmp_path / "in"
    for i in ("p1", "p2"):
        write_image(root / "train" / f"{i}.jpg", 16, 16)
        write_mask(root / "train_masks" / f"{i}_seg.png", box(16, 16))
    with pytest.raises(PipelineError, match="no mask for any of the 2 images"):
        inputs.check_train(root, workers=0)
    table, _ = inputs.check_train(root, workers=0, mask_suffix="_seg")
    assert sorted(table.id) == ["p1", "p2"]


def test_two_files_giving_one_id_are_one_line_naming_both(tmp_path):
    root = tmp_path / "in"
    write_image(root / "train" / "photo.jpg", 16, 16)
    write_image(root / "train" / "photo.png", 16, 16)
    write_mask(root / "train_masks" / "photo.png", box(16, 16))
    with pytest.raises(PipelineError) as e:
        inputs.check_train(root, workers=0)
    line = str(e.value)
    assert "\n" not in line and "photo.jpg and photo.png" in line and "duplicate image ids" in line


def test_two_masks_for_one_image_are_named(tmp_path):
    root = tmp_path / "in"
    write_image(root / "train" / "photo.jpg", 16, 16)
    write_mask(root / "train_masks" / "photo.png", box(16, 16))
    write_mask(root / "train_masks" / "photo_mask.png", box(16, 16))
    with pytest.raises(PipelineError, match="photo_mask.png and photo.png"):
        inputs.check_train(root, workers=0)


@pytest.mark.parametrize("ext, high", [(".png", 255), (".png", 1), (".tif", 255), (".bmp", 255), (".gif", 1)])
def test_binary_masks_in_each_format_read_as_they_look(tmp_path, ext, high):
    mask = box(20, 30)
    write_mask(tmp_path / f"m{ext}", mask, high)
    assert np.array_equal(inputs.read_mask(tmp_path / f"m{ext}"), mask)


def test_a_non_binary_mask_is_one_line_naming_the_file(tmp_path):
    values = box(20, 30).astype(np.uint8) * 255
    values[0, :3] = [3, 7, 9]
    Image.fromarray(values).save(tmp_path / "soft.png")
    with pytest.raises(PipelineError) as e:
        inputs.read_mask(tmp_path / "soft.png")
    assert str(e.value).startswith(f"{tmp_path / 'soft.png'}: mask is not binary") and "\n" not in str(e.value)


def test_instance_folders_are_merged_and_noted(tmp_path):
    root = tmp_path / "in"
    for i in ("dog1", "dog2"):
        write_image(root / "train" / f"{i}.jpg", 20, 30)
    a, b = np.zeros((20, 30), bool), np.zeros((20, 30), bool)
    a[2:8, 3:9], b[10:18, 12:28] = True, True
    write_mask(root / "train_masks" / "dog1" / "0.png", a)
    write_mask(root / "train_masks" / "dog1" / "1.png", b, high=1)
    write_mask(root / "train_masks" / "dog2.png", a)
    assert np.array_equal(inputs.read_mask(root / "train_masks" / "dog1"), a | b)
    table, notes = inputs.check_train(root, workers=0)
    assert table.set_index("id").mask_area["dog1"] == int((a | b).sum())
    assert any("1 image(s) take their mask from an instance folder" in n and "dog1" in n for n in notes), notes
    write_mask(root / "train_masks" / "dog1" / "2.png", np.zeros((5, 5), bool))
    with pytest.raises(PipelineError, match="2.png: instance mask is 5x5"):
        inputs.read_mask(root / "train_masks" / "dog1")


# --- groups ---
def test_groups_default_to_cars_for_carvana_ids_else_one_per_image():
    carvana = [f"{c:012x}_{v:02d}" for c in range(3) for v in (1, 2)]
    g = layout.groups_of(carvana)
    assert g.has_views and g.groups == [i[:12] for i in carvana] and g.views == [1, 2] * 3
    assert "Carvana" in g.rule
    other = ["photo_0001", "photo_0002", "scan 7"]
    g = layout.groups_of(other)
    assert not g.has_views and g.groups == other and "one group per image" in g.rule


@pytest.mark.parametrize("odd, regex, group", [
    ("000000000001_01_retake", r"^(.+?)_\d{2}(?:_|$)", "000000000001"),  # a retake of car 1's view 1
    ("photo_0001", r"^([^_]+)_", "photo"),
    ("lonely", None, None),  # no rule groups every id: only the advice to write one
])
def test_a_few_odd_ids_among_carvana_ids_are_refused_with_a_rule_that_groups_them(odd, regex, group):
    """One group per image would split every car over the folds because of one odd id: a refusal naming it and a
    --group-regex that gives every Carvana id its car (checked here) and the odd id a group."""
    import shlex
    carvana = [f"{c:012x}_{v:02d}" for c in range(3) for v in (1, 2)]
    with pytest.raises(PipelineError) as e:
        layout.groups_of(carvana + [odd])
    message = str(e.value)
    assert f"1 of 7 training ids are not <car>_<NN> as the others are ({odd})" in message and "nothing was written" in message
    if regex is None:
        assert "--group-regex with a capture group" in message
        return
    advised = shlex.split(message.split("`")[1])
    assert advised[advised.index("--group-regex") + 1] == regex
    g = layout.groups_of(carvana + [odd], regex)
    assert g.groups == [i[:12] for i in carvana] + [group]
    g = layout.groups_of(["pat1_a", "pat1_b", "pat22_a"], r"^(pat\d+)_")
    assert g.groups == ["pat1", "pat1", "pat22"] and layout.group_summary(g.groups).startswith("2 groups")
    with pytest.raises(PipelineError, match="image id 'x_a' does not match"):
        layout.groups_of(["pat1_a", "x_a"], r"^(pat\d+)_")


# --- run-length order ---
def test_column_order_rle_counts_down_then_right():
    mask = np.array([[0, 1, 1],
                     [0, 1, 0]], bool)
    assert rle.encode(mask) == "2 2 5 1"  # row-major: pixels 2, 3 (row 0), 5 (row 1)
    assert rle.encode(mask, "column") == "3 3"  # column-major: (0,1)=3, (1,1)=4, (0,2)=5
    assert np.array_equal(rle.decode("3 3", mask.shape, "column"), mask)
    with pytest.raises(ValueError, match="RLE order"):
        rle.encode(mask, "diagonal")


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (64, 97), (128, 1)])
def test_column_order_round_trips(shape):
    for density in (0.0, 0.3, 1.0):
        mask = RNG.random(shape) < density
        code = rle.encode(mask, "column")
        rle.validate(code, shape)
        assert np.array_equal(rle.decode(code, shape, "column"), mask)
        assert code == rle.encode(np.ascontiguousarray(mask.T), "row")


def test_train_masks_csv_is_read_in_the_given_order(tmp_path):
    root = tmp_path / "in"
    masks = {}
    for k, i in enumerate(("p1", "p2")):
        write_image(root / "train" / f"{i}.jpg", 12, 20)
        masks[i] = box(12, 20, k)
        write_mask(root / "train_masks" / f"{i}.png", masks[i])
    rows = [f"{i}.jpg,{rle.encode(m, 'column')}" for i, m in masks.items()]
    (root / files.TRAIN_MASKS_CSV).write_text("img,rle_mask\n" + "\n".join(rows) + "\n")
    inputs.check_train(root, workers=0, rle_order="column")
    with pytest.raises(PipelineError, match="RLE of p1 disagrees"):
        inputs.check_train(root, workers=0)  # row order: these codes are other masks


# --- the test set ---
def test_without_sample_submission_the_test_set_is_every_image_sorted_keyed_by_file_name(tmp_path):
    root = tmp_path / "in"
    for name in ("b.png", "a.jpg", "c d.JPG", "é.v2.tif"):
        write_image(root / "test" / name, 8, 8)
    (root / "test" / "notes.txt").write_text("x")
    ids, keys = inputs.test_rows(root)
    assert ids == ["a", "b", "c d", "é.v2"] and keys == ["a.jpg", "b.png", "c d.JPG", "é.v2.tif"]
    ids2, paths = inputs.check_test(root)
    assert ids2 == ids and [paths[i].name for i in ids] == keys
    path = tmp_path / "s.csv.gz"
    submission.write_submission(path, ids, ["1 2", "", "3 1", "1 64"], (8, 8), keys=keys)
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["img", "rle_mask"] and [r[0] for r in rows[1:]] == keys
    assert [i for i, _ in submission.read_submission(path)] == ids


# --- end to end: other names, several sizes, column order, no sample_submission.csv ---
SIZES = [(160, 240), (120, 200)]  # (H, W): half the images are shrunk
E2E = ["--preset", "demo", "--height", "32", "--width", "64", "--epochs", "1", "--n-folds", "2", "--workers", "0",
       "--batch-size", "4", "--predict-batch-size", "8", "--val-every", "1", "--rle-order", "column"]


def renamed_dataset(tiny_demo: Path, root: Path) -> dict[str, tuple[int, int]]:
    """The tiny demo's images as photo NNN.<png|jpg> (two sizes), masks photo NNN.png 0/255 (one as an instance
    folder), the test car in test/ with truth in test_masks/, no sample_submission.csv. Returns id -> (H, W)."""
    sizes = {}
    for split, masks in (("train", "train_masks"), ("test", "test_masks")):
        paths = sorted((tiny_demo / split).glob("*.jpg"))[: 24 if split == "train" else 6]
        for k, path in enumerate(paths):
            image_id = f"photo {split[:2]}.{k:03d}"
            h, w = SIZES[k % 2]
            image = cv2.resize(cv2.imread(str(path)), (w, h), interpolation=cv2.INTER_AREA)
            mask = inputs.read_mask(tiny_demo / masks / files.mask_name(path.stem)).astype(np.uint8)
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            (root / split).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / split / f"{image_id}{'.png' if k % 3 == 0 else '.jpg'}"), image)
            if split == "train" and k == 1:  # an instance folder: the mask split in two objects
                left, right = mask.copy(), mask.copy()
                left[:, w // 2:], right[:, : w // 2] = False, False
                write_mask(root / masks / image_id / "a.png", left)
                write_mask(root / masks / image_id / "b.png", right)
            else:
                write_mask(root / masks / f"{image_id}.png", mask)
            sizes[image_id] = (h, w)
    return sizes


def test_other_names_and_mixed_sizes_run_end_to_end(tiny_demo, tmp_path):
    root, out = tmp_path / "in put", tmp_path / "out"
    sizes = renamed_dataset(tiny_demo, root)
    args = ["--input", root, "--output", out, *E2E]
    proc = run_script("01_prepare.py", *args)
    assert "one group per image" in proc.stdout and "24 groups, images per group min 1, median 1, max 1" in proc.stdout
    assert "image sizes differ (2 sizes" in proc.stdout and "1 image(s) take their mask from an instance folder" \
        in proc.stdout
    assert "test: 6 images in test/ (no sample_submission.csv" in proc.stdout
    meta = json.loads((out / "cache" / "truth" / "meta.json").read_text())
    assert meta["orig_size"] is None and {tuple(s) for s in meta["sizes"]} == set(SIZES)
    run_script("02_train.py", "--fold", "all", *args)
    run_script("03_predict.py", *args)
    run = files.run_dir(out, "demo")
    tuning = json.loads((run / files.TUNING).read_text())
    assert tuning["orig_size"] == [] and tuning["n_images"] == 24
    proc = run_script("04_submit.py", *args, "--baselines", "--score")
    assert "average mask, global" in proc.stdout and "per view" not in proc.stdout
    with gzip.open(run / "submission.csv.gz", "rt", newline="") as f:
        rows = list(csv.reader(f))
    test_ids = sorted(i for i in sizes if i.startswith("photo te"))
    assert rows[0] == ["img", "rle_mask"]
    assert [r[0] for r in rows[1:]] == [inputs.test_files(root)[i] for i in test_ids]  # file names, sorted by id
    for (key, code), image_id in zip(rows[1:], test_ids):
        rle.validate(code, sizes[image_id])  # each at its own size
        assert rle.decode(code, sizes[image_id], "column").any()
    manifest = json.loads((run / "submission.manifest.json").read_text())
    assert manifest["orig_size"] is None and manifest["rle_order"] == "column"
    table = (run / files.COMPARISON).read_text()
    test_dice = {line.split(" | ")[0][2:]: float(line.split(" | ")[-1].rstrip(" |")) for line in table.splitlines()
                 if line.startswith("| ") and "system" not in line and "---" not in line and line.split(" | ")[-1]
                 .rstrip(" |") != "-"}
    # the global average mask, brought to each test image's size, scores as it does on the training images
    assert 0.4 < test_dice["average mask, global"] < 1.0 and 0.0 < test_dice["submission submission.csv.gz"] <= 1.0
    # the score of the column-order submission read in row order would be another one: the order is used
    truth = {i: inputs.read_mask(root / "test_masks" / f"{i}.png") for i in test_ids}
    scores = [2 * (rle.decode(c, sizes[i], "column") & truth[i]).sum() /
              max(1, rle.decode(c, sizes[i], "column").sum() + truth[i].sum()) for (_, c), i in zip(rows[1:], test_ids)]
    assert np.mean(scores) == pytest.approx(test_dice["submission submission.csv.gz"], abs=1e-5)
    shutil.rmtree(out)


@pytest.mark.parametrize("ids, noun", [(["img_001", "img_002"], "group"), (["0cdf5b5d0ce1_01", "0cdf5b5d0ce1_02"], "car")])
def test_too_few_groups_for_the_folds_say_groups_unless_the_ids_are_carvanas(ids, noun):
    from lib import folds
    g = layout.groups_of(ids)
    table = pd.DataFrame({"id": ids, "car": g.groups, "view": g.views, "mask_area": [1.0] * len(ids)})
    with pytest.raises(PipelineError) as e:
        folds.split(table, 5, 0)
    n = table.car.nunique()
    assert str(e.value).startswith(f"{n} {noun}(s) cannot make 5 {noun}-grouped folds"), e.value
    assert ("car" in str(e.value)) == (noun == "car")
