"""Kaggle's per-class RLE CSVs (lib/kagglecsv.py): a train.csv of Severstal's or Clouds' form as the training truth
(read by 01's check and the cache, overlaps kept), its bad rows refused one line each, and submissions written in the
form of sample_submission.csv; the four stages end to end on a Severstal-form copy of the multi-label demo."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_FLAGS, run_script
from lib import cache, files, inputs, kagglecsv, rle, submission
from lib.errors import PipelineError
from lib.task import Task

H, W = 32, 48
STEEL = Task(3, multilabel=True)  # Severstal's ClassIds 1..3: labels named "1", "2", "3"
CLOUDS = Task(4, ("Fish", "Flower", "Gravel", "Sugar"), multilabel=True)


def truth_of(k: int, labels: int = 3) -> np.ndarray:
    """(labels, H, W) bool truth of photo k: labels 0 and 1 overlap, label 2 in even photos, photo 3 holds none."""
    truth = np.zeros((labels, H, W), bool)
    if k == 3:
        return truth
    truth[0, 2 + k:12, 3:20] = True
    truth[1, 8:20, 10 + k:30] = True  # overlaps label 0 in rows 8-11
    if k % 2 == 0:
        truth[2, 22:30, 5 * k:5 * k + 9] = True
    return truth


def write_photos(root, n: int = 4) -> None:
    (root / "train").mkdir(parents=True)
    for k in range(n):
        Image.fromarray(np.full((H, W, 3), 30 + 40 * k, np.uint8)).save(root / "train" / f"s{k}.jpg")


def steel_rows(header: tuple[str, ...], n: int = 4) -> list[str]:
    """The CSV lines of a Severstal-form train.csv (``header``: the three columns in some order, or the joined form)
    of photos 0..n-1: a row per photo and label present, RLEs column-major."""
    lines = [",".join(header)]
    for k in range(n):
        for c, mask in enumerate(truth_of(k)):
            if mask.any():
                values = {"ImageId": f"s{k}.jpg", "ClassId": str(c + 1), "EncodedPixels": rle.encode(mask, "column"),
                          "ImageId_ClassId": f"s{k}.jpg_{c + 1}"}
                lines.append(",".join(values[h] for h in header))
    return lines


def clouds_rows(names=CLOUDS.names, n: int = 4, truth=truth_of) -> list[str]:
    """Clouds' form: a row per photo and label, empty where the photo does not hold it."""
    lines = ["Image_Label,EncodedPixels"]
    for k in range(n):
        masks = truth(k, len(names))
        lines += [f"s{k}.jpg_{name},{rle.encode(masks[c], 'column')}" for c, name in enumerate(names)]
    return lines


def dataset(tmp_path, lines: list[str]):
    root = tmp_path / "input"
    write_photos(root)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("header", [("ImageId", "ClassId", "EncodedPixels"), ("ImageId", "EncodedPixels", "ClassId"),
                                    ("ImageId_ClassId", "EncodedPixels")])
def test_severstal_rows_give_each_photo_its_overlapping_labels_and_the_cache_keeps_them(header, tmp_path):
    root = dataset(tmp_path, steel_rows(header))
    table, notes = inputs.check_train(root, workers=0, rle_order="column", task=STEEL)
    assert list(table.id) == ["s0", "s1", "s2", "s3"] and list(table.mask_area) == [int(truth_of(k).sum())
                                                                                     for k in range(4)]
    assert any(f"training truth from {root / 'train.csv'} ({','.join(header)}" in n and
               "1 of the 4 training images have no row: no class" in n for n in notes), notes
    out = tmp_path / "out"
    data = cache.open_cache(root, out, list(table.id), 32, 64, workers=0, mode="on", task=STEEL)
    for k in range(4):
        assert np.array_equal(data.full_mask(k), truth_of(k)), k
    assert data.full_mask(0)[:2, 10, 12].all()  # the overlap holds both labels
    lines = steel_rows(header)  # a row changed: the cache is made again from the new rows
    (root / "train.csv").write_text("\n".join(lines[:-1]) + "\n")
    again = cache.open_cache(root, out, list(table.id), 32, 64, workers=0, mode="on", task=STEEL)
    assert not again.full_mask(2)[2].any() and np.array_equal(again.full_mask(2)[:2], truth_of(2)[:2])


def test_clouds_rows_name_their_labels_and_a_multiclass_task_paints_them_unless_they_overlap(tmp_path):
    root = dataset(tmp_path, clouds_rows())
    table, _ = inputs.check_train(root, workers=0, rle_order="column", task=CLOUDS)
    pairs, problems = inputs.train_pairs(root, task=CLOUDS)
    assert not problems and all(isinstance(m, kagglecsv.CsvTruth) for _, m in pairs.values())
    for k in range(4):
        assert np.array_equal(CLOUDS.read_truth(pairs[f"s{k}"][1]), truth_of(k, 4)), k
    classes = Task(5, ("background", *CLOUDS.names))  # one class per pixel: ClassIds and names keep their meaning
    with pytest.raises(PipelineError) as refused:
        inputs.check_train(root, workers=0, rle_order="column", task=classes)
    line = next(x.strip() for x in str(refused.value).splitlines() if "s0.jpg" in x)
    assert line.startswith(f"{root / 'train.csv'} line 3 (s0.jpg): its Flower overlaps the Fish of "
                           f"{root / 'train.csv'} line 2 (s0.jpg) in ")
    assert line.endswith("--classes 4 --multilabel --class-names Fish,Flower,Gravel,Sugar`")

    def apart(k, labels):  # no overlap: label 1 less label 0
        truth = truth_of(k, labels)
        truth[1] &= ~truth[0]
        return truth
    (root / "train.csv").write_text("\n".join(clouds_rows(truth=apart)) + "\n")
    inputs.check_train(root, workers=0, rle_order="column", task=classes)
    labels = classes.read_truth(inputs.train_pairs(root, task=classes)[0]["s0"][1])
    expected = np.zeros((H, W), np.uint8)
    for c, mask in enumerate(apart(0, 4)):
        expected[mask] = c + 1
    assert np.array_equal(labels, expected)


def _unknown_image(lines):
    lines.append("zz.jpg,1,1 5")
    return len(lines), "image 'zz.jpg' is not in", "add the image or remove its rows"


def _class_id_above(lines):
    lines.append("s3.jpg,4,1 5")
    return len(lines), "ClassId '4' is not one of 1..3 (--classes 3 --multilabel)", "or give --classes 4 (and as many"


def _class_id_zero(lines):
    lines.insert(2, "s3.jpg,0,1 5")
    return 3, "ClassId '0' is not one of 1..3", "fix or remove the row"


def _rle_past_the_image(lines):
    lines.append(f"s3.jpg,1,{H * W - 3} 10")
    return len(lines), f"the EncodedPixels of s3.jpg are no RLE of its {W}x{H} image", f"beyond the {H * W} pixels"


def _rle_malformed(lines):
    lines.append("s3.jpg,2,5 x")
    return len(lines), "the EncodedPixels of s3.jpg are no RLE", "fix the row"


def _two_rows_for_one_class(lines):
    lines.append(lines[1])
    return len(lines), "lines 2 and", "two rows for s0.jpg and class 1; keep one"


BAD_ROWS = [_unknown_image, _class_id_above, _class_id_zero, _rle_past_the_image, _rle_malformed,
            _two_rows_for_one_class]


@pytest.mark.parametrize("damage", BAD_ROWS, ids=[f.__name__[1:] for f in BAD_ROWS])
def test_a_bad_row_is_one_line_naming_the_file_the_line_and_the_fix(damage, tmp_path):
    lines = steel_rows(("ImageId", "ClassId", "EncodedPixels"))
    line, what, fix = damage(lines)
    root = dataset(tmp_path, lines)
    with pytest.raises(PipelineError) as refused:
        inputs.check_train(root, workers=0, rle_order="column", task=STEEL)
    problems = str(refused.value).splitlines()
    assert problems[0] == f"1 problem(s) in {root}:", problems
    assert problems[1].strip().startswith(f"{root / 'train.csv'} line") and f" {line}" in problems[1].split(":")[0]
    assert what in problems[1] and fix in problems[1], problems[1]
    with pytest.raises(PipelineError, match=r"train\.csv"):  # nor does a later stage's cache take the other rows
        cache.open_cache(root, tmp_path / "out", ["s0", "s1", "s2", "s3"], 32, 64, workers=0, task=STEEL)
    assert not (tmp_path / "out" / "cache" / "truth" / "meta.json").exists()


def test_headers_tasks_and_pixel_orders_that_cannot_read_the_csv_are_refused(tmp_path):
    root = dataset(tmp_path, steel_rows(("ImageId", "ClassId", "EncodedPixels")))
    with pytest.raises(PipelineError, match=r"train\.csv: ImageId,ClassId,EncodedPixels rows count pixels top to "
                                            r"bottom, then left to right, and --rle-order is row; give --rle-order "
                                            r"column to every stage: `"):
        inputs.check_train(root, workers=0, rle_order="row", task=STEEL)
    with pytest.raises(PipelineError, match=r"train\.csv: per-class RLE rows \(ImageId,ClassId,EncodedPixels\) hold "
                                            r"the training truth .* binary masks; .*--classes 3 --multilabel`"):
        inputs.check_train(root, workers=0, rle_order="column")
    (root / "train.csv").write_text("\n".join(clouds_rows()) + "\n")
    with pytest.raises(PipelineError, match=r"--classes 4 --multilabel --class-names Fish,Flower,Gravel,Sugar`"):
        inputs.check_train(root, workers=0, rle_order="column")
    with pytest.raises(PipelineError, match=r"line 2 \(and 3 more rows\): label 'Fish' is not one of the class names "
                                            r"1, 2, 3 .*--classes 4 --class-names Fish,Flower,Gravel,Sugar`"):
        inputs.check_train(root, workers=0, rle_order="column", task=STEEL)
    (root / "train.csv").write_text("ImageId,Class,EncodedPixels\ns0.jpg,1,1 5\n")
    with pytest.raises(PipelineError, match=r"train\.csv: columns are \['ImageId', 'Class', 'EncodedPixels'\], "
                                            r"expected ImageId,ClassId,EncodedPixels"):
        inputs.check_train(root, workers=0, rle_order="column", task=STEEL)
    (root / "train_masks").mkdir()  # a train_masks/ folder holds the truth, and train.csv is not read
    with pytest.raises(PipelineError, match="no mask for any of the 4 images"):
        inputs.check_train(root, workers=0, rle_order="column", task=STEEL)


def test_01_refuses_a_bad_row_and_writes_nothing(tmp_path):
    lines = steel_rows(("ImageId", "ClassId", "EncodedPixels"))
    lines.append("s1.jpg,3,1 99999")
    root, out = dataset(tmp_path, lines), tmp_path / "out"
    flags = ["--classes", "3", "--multilabel", "--rle-order", "column", "--input", root, "--output", out,
             "--n-folds", "2", "--workers", "0", "--preset", "demo", "--height", "32", "--width", "64"]
    failed = run_script("01_prepare.py", *flags, check=False)
    assert failed.returncode == 1 and f"{root / 'train.csv'} line {len(lines)}: the EncodedPixels of s1.jpg" in \
        failed.stderr and not out.exists()
    (root / "train.csv").write_text("\n".join(lines[:-1]) + "\n")
    done = run_script("01_prepare.py", *flags)
    assert "task: 3 overlapping labels (1, 2, 3)" in done.stdout and "training truth from" in done.stdout


SAMPLES = {  # the sample's text and the (image id, class) of its rows
    "severstal": ("ImageId,ClassId,EncodedPixels\nt1.jpg,3,1 1\nt0.jpg,1,1 1\nt0.jpg,2,1 1\n",
                  [("t1", 2), ("t0", 0), ("t0", 1)]),
    "severstal, pixels second": ("ImageId,EncodedPixels,ClassId\nt1.jpg,1 1,3\nt0.jpg,1 1,1\n", [("t1", 2), ("t0", 0)]),
    "severstal joined": ("ImageId_ClassId,EncodedPixels\nt1.jpg_3,\nt0.jpg_1,\nt1.jpg_1,\n",
                         [("t1", 2), ("t0", 0), ("t1", 0)]),
    "clouds": ("Image_Label,EncodedPixels\nt1.jpg_Gravel,\nt0.jpg_Fish,\n", [("t1", 2), ("t0", 0)]),
    "own": ("img,rle_mask\nt1.jpg_3,1 1\nt0.jpg_1,1 1\n", [("t1", 2), ("t0", 0)]),
}


@pytest.mark.parametrize("form", SAMPLES)
def test_a_submission_takes_the_header_ids_and_order_of_the_sample_submission(form, tmp_path):
    text, expected = SAMPLES[form]
    task = CLOUDS if form == "clouds" else STEEL
    (tmp_path / "test").mkdir()
    for k in range(2):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "test" / f"t{k}.jpg")
    sample = tmp_path / "sample_submission.csv"
    sample.write_text(text)
    test_ids, keys, class_rows = inputs.test_class_rows(tmp_path, task)
    assert test_ids == ["t1", "t0"] and class_rows == expected
    assert inputs.check_test(tmp_path, task)[0] == ["t1", "t0"]
    codes = [f"{n + 1} 2" for n in range(len(keys))]
    path = tmp_path / "submission.csv.gz"
    submission.write(path, keys, iter(codes), {}, sample)
    with gzip.open(path, "rt") as f:
        written = [line.rstrip("\n").split(",") for line in f]
    given = [line.split(",") for line in text.splitlines()]
    assert written[0] == given[0] and len(written) == len(given)  # the sample's header, a row per sample row
    pixels = given[0].index("EncodedPixels") if "EncodedPixels" in given[0] else 1
    assert [r[:pixels] + r[pixels + 1:] for r in written] == [r[:pixels] + r[pixels + 1:] for r in given]
    assert [r[pixels] for r in written[1:]] == codes
    assert list(submission.read_submission(path, strip_extension=False)) == list(zip(keys, codes))
    if form == "own":
        kagglecsv.check_order(sample, "row")  # the project's own form: any order
    else:
        with pytest.raises(PipelineError, match=r"sample_submission\.csv: .* rows count pixels top to bottom"):
            kagglecsv.check_order(sample, "row")
    kagglecsv.check_order(sample, "column")


def test_a_sample_row_of_a_class_the_task_lacks_is_refused(tmp_path):
    (tmp_path / "sample_submission.csv").write_text("ImageId,ClassId,EncodedPixels\nt0.jpg,1,\nt0.jpg,4,\n")
    with pytest.raises(PipelineError, match=r"rows t0\.jpg_4 are not an ImageId and a ClassId with ClassIds 1\.\.3"):
        inputs.test_class_rows(tmp_path, STEEL)


@pytest.mark.slow
def test_a_severstal_form_set_end_to_end(tmp_path):
    """01 -> 04 on the multi-label demo rewritten as Severstal's files: train.csv instead of train_masks/, a
    sample_submission.csv of ImageId,EncodedPixels,ClassId rows; the submission keeps that form and scores."""
    from demo import labels
    root, out = tmp_path / "input", tmp_path / "out"
    labels.generate(root, 6, 2, width=64, height=32)
    lines = ["ImageId,ClassId,EncodedPixels"]
    for folder in sorted((root / "train_masks").iterdir()):
        truth = Task(3, multilabel=True).read_truth(folder)
        lines += [f"{folder.name}.jpg,{c + 1},{rle.encode(m, 'column')}" for c, m in enumerate(truth) if m.any()]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    shutil.rmtree(root / "train_masks")
    tests = sorted(p.name for p in (root / "test").iterdir())
    (root / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\n" + "".join(
        f"{name},1 1,{c}\n" for name in reversed(tests) for c in (2, 1, 3)))
    flags = [*TINY_FLAGS, "--classes", "3", "--multilabel", "--rle-order", "column", "--batch-size", "2", "--epochs",
             "1", "--tta", "none", "--height", "32", "--width", "64", "--input", str(root), "--output", str(out)]
    prep = run_script("01_prepare.py", *flags)
    assert "training truth from" in prep.stdout and "1 of the 6 training images have no row" in prep.stdout
    run_script("02_train.py", "--fold", "all", *flags)
    run_script("03_predict.py", *flags)
    done = run_script("04_submit.py", "--score", *flags)
    assert "test Dice of submission.csv.gz" in done.stdout
    with gzip.open(files.run_dir(out, "demo") / "submission.csv.gz", "rt") as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    sample = [line.split(",") for line in (root / "sample_submission.csv").read_text().splitlines()]
    assert rows[0] == ["ImageId", "EncodedPixels", "ClassId"] and len(rows) == len(sample)
    assert [(r[0], r[2]) for r in rows] == [(r[0], r[2]) for r in sample]
    for row in rows[1:]:
        rle.validate(row[1], (64, 32))  # column-major: the transposed shape
    refused = run_script("04_submit.py", *[f for f in flags if f not in ("--rle-order", "column")], check=False)
    assert refused.returncode == 1 and "--rle-order column to every stage" in refused.stderr
