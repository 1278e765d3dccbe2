"""Multi-class masks (--classes C): label, palette and colour masks, class instance folders, truth storage, and the
four stages end to end on a tiny multi-class demo."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_FLAGS, run_script
from lib import files, inputs, rle, testmaps
from lib.errors import PipelineError
from lib.metrics import MIN_AREAS
from lib.model import read_checkpoint
from lib.task import Task

TASK = Task(4, ("background", "road", "roof", "tree"), ((0, 0, 0), (128, 128, 128), (220, 60, 40), (40, 170, 60)))


def labels_image(h: int = 6, w: int = 8) -> np.ndarray:
    labels = np.zeros((h, w), np.uint8)
    labels[1:3, 1:5], labels[4:, 2:4], labels[0, 7] = 1, 2, 3
    return labels


def test_label_palette_and_colour_masks_read_as_the_same_labels(tmp_path):
    labels = labels_image()
    Image.fromarray(labels).save(tmp_path / "grey.png")
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([255, 255, 255, 9, 9, 9, 1, 2, 3, 200, 0, 0] + [0] * 744)  # VOC: the index is the class
    pal.save(tmp_path / "palette.png")
    Image.fromarray(np.array(TASK.colors, np.uint8)[labels]).save(tmp_path / "colour.png")
    for name in ("grey.png", "palette.png", "colour.png"):
        assert np.array_equal(TASK.read_truth(tmp_path / name), labels), name


def test_bad_label_masks_are_one_line_naming_the_file(tmp_path):
    labels = labels_image()
    labels[0, 0] = 7
    Image.fromarray(labels).save(tmp_path / "high.png")
    with pytest.raises(PipelineError, match=r"high\.png: label values 7 outside 0\.\.3"):
        TASK.read_truth(tmp_path / "high.png")
    colours = np.array(TASK.colors, np.uint8)[labels_image()]
    colours[2, 3] = (1, 2, 3)
    Image.fromarray(colours).save(tmp_path / "odd.png")
    with pytest.raises(PipelineError, match=r"odd\.png: 1 pixels of colours .* \(1, 2, 3\) at x=3, y=2"):
        TASK.read_truth(tmp_path / "odd.png")
    with pytest.raises(PipelineError, match="--class-colors"):
        Task(4).read_truth(tmp_path / "odd.png")


def test_class_instance_folders_paint_each_object_and_refuse_two_classes_that_overlap(tmp_path):
    folder = tmp_path / "img1"
    folder.mkdir()
    road, tree = np.zeros((6, 8), np.uint8), np.zeros((6, 8), np.uint8)
    road[1:3, :] = 255
    tree[2:5, 5:7] = 255  # overlaps the road at row 2, columns 5-6
    Image.fromarray(road).save(folder / "a__road.png")
    Image.fromarray(tree).save(folder / "b__tree.png")
    with pytest.raises(PipelineError) as refused:
        TASK.read_truth(folder)
    line = str(refused.value)
    assert "\n" not in line and line.startswith(
        f"{folder / 'b__tree.png'}: its tree overlaps the road of {folder / 'a__road.png'} in 2 pixels")
    assert line.endswith("01_prepare.py --classes 3 --multilabel --class-names road,roof,tree`")
    labels = Task(3, ("road", "roof", "tree"), multilabel=True).read_truth(folder)  # what the advice reads
    assert labels[0, 2, 5] and labels[2, 2, 5] and labels[0].sum() == 16 and labels[2].sum() == 6
    tree[2] = 0  # no overlap: each object painted with its class; objects of one class may overlap
    Image.fromarray(tree).save(folder / "b__tree.png")
    road2 = np.zeros((6, 8), np.uint8)
    road2[0:2, 0:3] = 255  # overlaps a__road: the same class
    Image.fromarray(road2).save(folder / "c__road.png")
    labels = TASK.read_truth(folder)
    expected = np.zeros((6, 8), np.uint8)
    expected[1:3, :], expected[0, 0:3], expected[3:5, 5:7] = 1, 1, 3
    assert np.array_equal(labels, expected)
    Image.fromarray(tree).save(folder / "c__car.png")
    with pytest.raises(PipelineError, match=r"c__car\.png: .*<anything>__<class>"):
        TASK.read_truth(folder)


def write_instance_set(root, overlap: bool) -> None:
    """4 training photos of 48 x 32 with class instance folders (road, tree); photo c2's tree overlaps its road."""
    for k in range(4):
        image_id = f"c{k}"
        (root / "train_masks" / image_id).mkdir(parents=True)
        (root / "train").mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 48, 3), 40 * k, np.uint8)).save(root / "train" / f"{image_id}.png")
        road, tree = np.zeros((32, 48), np.uint8), np.zeros((32, 48), np.uint8)
        road[4:10, :] = 255
        tree[12 - (6 if overlap and k == 2 else 0):20, 30:40] = 255
        Image.fromarray(road).save(root / "train_masks" / image_id / "0__road.png")
        Image.fromarray(tree).save(root / "train_masks" / image_id / "1__tree.png")


def test_overlapping_classes_are_refused_by_01_and_its_advice_prepares_them(tmp_path):
    from test_repairs import advised
    root, out = tmp_path / "input", tmp_path / "out"
    write_instance_set(root, overlap=True)
    flags = ["--input", root, "--output", out, "--n-folds", "2", "--workers", "0", "--height", "32", "--width", "64",
             "--preset", "demo"]
    failed = run_script("01_prepare.py", "--classes", "4", "--class-colors", classes_csv(tmp_path), *flags,
                        check=False)
    assert failed.returncode == 1 and not out.exists()  # nothing written
    line = next(x for x in failed.stderr.splitlines() if "overlaps" in x).strip()
    assert line.startswith(f"{root / 'train_masks' / 'c2' / '1__tree.png'}: its tree overlaps the road of "
                           f"{root / 'train_masks' / 'c2' / '0__road.png'} in 40 pixels")
    args = advised(line, "01_prepare.py")
    assert "--class-colors" not in args and args[:5] == ["--classes", "3", "--multilabel", "--class-names",
                                                         "road,roof,tree"]
    done = run_script("01_prepare.py", *args)
    assert "task: 3 overlapping labels (road, roof, tree)" in done.stdout
    write_instance_set(tmp_path / "apart", overlap=False)  # without the overlap the multi-class set is prepared
    apart = run_script("01_prepare.py", "--classes", "4", "--class-colors", classes_csv(tmp_path), *flags[4:],
                       "--input", tmp_path / "apart", "--output", tmp_path / "out_apart")
    assert "task: 4 classes (background, road, roof, tree)" in apart.stdout


def classes_csv(folder) -> str:
    path = folder / "classes.csv"
    path.write_text("".join(f"{name},{r},{g},{b}\n" for name, (r, g, b) in zip(TASK.names, TASK.colors)))
    return str(path)


@pytest.mark.parametrize("classes", [2, 3, 5, 17])
def test_truth_bit_planes_round_trip(classes):
    task = Task(classes)
    labels = np.random.default_rng(classes).integers(0, classes, (37, 53)).astype(np.uint8)
    packed = task.pack_truth(labels)
    assert packed.size == -(-37 * 53 * task.truth_bits // 8)
    assert np.array_equal(task.unpack_truth(packed, (37, 53)), labels)


def test_multiclass_rows_of_a_sample_submission(tmp_path):
    (tmp_path / "test").mkdir()
    for i in ("a_1", "b.x"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "test" / f"{i}.png")
    ids, keys, pairs = inputs.test_class_rows(tmp_path, TASK)  # no sample_submission.csv: every image, every class
    assert ids == ["a_1", "b.x"] and keys[:3] == ["a_1_road", "a_1_roof", "a_1_tree"] and pairs[4] == ("b.x", 2)
    (tmp_path / "sample_submission.csv").write_text("img,rle_mask\nb.x_tree,1 1\na_1_road,1 1\n")
    ids, keys, pairs = inputs.test_class_rows(tmp_path, TASK)
    assert ids == ["b.x", "a_1"] and keys == ["b.x_tree", "a_1_road"] and pairs == [("b.x", 3), ("a_1", 1)]
    (tmp_path / "sample_submission.csv").write_text("img,rle_mask\nb.x_car,1 1\n")
    with pytest.raises(PipelineError, match="b.x_car"):
        inputs.test_class_rows(tmp_path, TASK)


@pytest.mark.slow
def test_the_multiclass_demo_end_to_end(tmp_path):
    """01 -> 04 on a tiny multi-class demo: label PNGs, per-class rows in sample_submission.csv order, the majority
    baseline and Dice per class in the comparison, the test score read back from the written file; each class's
    minimum area tuned, shown per class in 03's table, and applied by 04 and 03 --images."""
    root, out = tmp_path / "input", tmp_path / "out"
    flags = [*TINY_FLAGS, "--classes", "5", "--class-colors", str(root / "classes.csv"), "--input", str(root),
             "--output", str(out)]
    prep = run_script("01_prepare.py", "--demo", "--demo-kind", "multiclass", "--demo-train-cars", "2",
                      "--demo-test-cars", "1", "--demo-width", "192", "--demo-height", "128", *flags)
    assert "task: 5 classes (background, road, building, tree, water)" in prep.stdout
    assert "classes (share of pixels" in prep.stdout
    run_script("02_train.py", "--fold", "all", *flags)
    colours = [[int(v) for v in line.split(",")[1:]] for line in (root / "classes.csv").read_text().split()[1:]]
    assert read_checkpoint(files.fold_dir(out, "demo", 0) / files.BEST)["task"] == {
        "classes": 5, "names": ["background", "road", "building", "tree", "water"], "colors": colours}
    predicted = run_script("03_predict.py", *flags)
    overlays = files.run_dir(out, "demo") / "overlays"
    assert f"in {overlays}" in predicted.stdout
    photos = sorted((root / "test").iterdir())[:2]
    masks = run_script("03_predict.py", "--images", *photos, "--images-out", tmp_path / "masks", *flags)
    assert masks.returncode == 0
    for picture in [*overlays.glob("*.jpg"), *(tmp_path / "masks").glob("*_overlay.jpg")]:  # every class in the legend
        pixels = np.array(Image.open(picture).convert("RGB")).astype(int)
        for rgb in colours[1:]:
            assert (np.abs(pixels - rgb).max(axis=-1) <= 30).any(), (picture.name, rgb)
    tuning = json.loads((files.run_dir(out, "demo") / files.TUNING).read_text())
    assert set(tuning["class_dice"]) == {"road", "building", "tree", "water"} and tuning["task"]["classes"] == 5
    assert "per class: min area, OOF Dice (without gating)" in predicted.stdout
    assert len(tuning["label_min_areas"]) == 4 and set(tuning["label_min_areas"]) <= set(MIN_AREAS)
    pooled = [s for s in tuning["scores"] if s["name"].endswith("out-of-fold")]
    assert pooled and all(s["class_dice"][c] >= s["class_dice_ungated"][c] for s in pooled for c in s["min_areas"])
    assert all(f"{c}: " in predicted.stdout for c in ("road", "building", "tree", "water"))
    some_map = next((files.run_dir(out, "demo") / files.TEST_PROBS).glob("*.png"))
    assert testmaps.read_map(some_map).shape == (5 * 64, 96)  # the class maps stacked
    done = run_script("04_submit.py", "--baselines", "--score", *flags)
    with gzip.open(files.run_dir(out, "demo") / "submission.csv.gz", "rt") as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    sample = (root / "sample_submission.csv").read_text().splitlines()
    assert [r[0] for r in rows] == [line.split(",")[0] for line in sample]  # header and every row, in order
    assert len(rows) == 1 + 16 * 4
    truth = np.array(Image.open(root / "test_masks" / f"{rows[1][0].rsplit('_', 1)[0]}.png"))
    for row in rows[1:5]:
        rle.validate(row[1], truth.shape)
    table = (files.run_dir(out, "demo") / files.COMPARISON).read_text()
    assert "| majority class per pixel |" in table
    assert "| road OOF | building OOF | tree OOF | water OOF | road test | building test | tree test | water test |" \
        in table and "threshold" not in table.splitlines()[2]  # the argmax decides: no threshold column
    assert f"test on the masks in {root / 'test_masks'}" in table  # the truth folder it scored against
    assert "threshold" not in predicted.stdout.split("tuning:")[0]  # 03's tuning lines: no threshold either
    assert "test Dice of submission.csv.gz" in done.stdout
    assert "baseline_majority.csv.gz (none: the majority class decides)" in done.stdout  # no threshold named

    # a tuning that gates one class (as one made on scenes without it would): 04 and 03 --images make its small
    # regions background and leave every other row as it was
    run = files.run_dir(out, "demo")
    size = truth.shape
    areas = {key: int(rle.decode(code, size).sum()) for key, code in rows[1:]}
    name = max(("road", "building", "tree", "water"), key=lambda c: len({a for k, a in areas.items()
                                                                          if k.endswith(f"_{c}") and a}))
    mine = sorted(a for k, a in areas.items() if k.endswith(f"_{name}") and a)
    cut = mine[len(mine) // 2]  # about half its non-empty rows are smaller
    record = json.loads((run / files.TUNING).read_text())
    record["label_min_areas"] = [max(a, cut / truth.size) if c == name else a  # the others as tuned
                                 for c, a in zip(("road", "building", "tree", "water"), record["label_min_areas"])]
    files.write_text_atomic(run / files.TUNING, json.dumps(record))
    gated_run = run_script("04_submit.py", *flags)
    assert "made background under: " in gated_run.stdout and f"{name} {cut / truth.size:.2%}" in gated_run.stdout
    with gzip.open(run / "submission.csv.gz", "rt") as f:
        gated = dict(line.rstrip("\n").split(",") for line in list(f)[1:])
    emptied = [k for k, a in areas.items() if k.endswith(f"_{name}") and 0 < a < cut]
    assert emptied and all(gated[k] == "" for k in emptied)
    assert all(gated[k] == code for k, code in rows[1:] if k not in emptied)
    gated_masks = tmp_path / "gated_masks"
    run_script("03_predict.py", "--images", *photos, "--images-out", gated_masks, *flags)
    photo_rows = [line.split(",") for line in (gated_masks / "masks.csv").read_text().splitlines()[1:]]
    photo_areas = [int(rle.decode(code, size).sum()) for key, code in photo_rows if key.endswith(f"_{name}")]
    assert len(photo_areas) == len(photos) and all(a == 0 or a >= cut for a in photo_areas)
