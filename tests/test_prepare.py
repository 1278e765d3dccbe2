"""01_prepare.py: input checks name the file and exit non-zero; folds are grouped by car."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_FLAGS, run_script
from lib import files, folds, inputs, rle
from lib.errors import PipelineError

CAR_ID = None


def copy_input(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def first_id(root: Path) -> str:
    return sorted(p.stem for p in (root / "train").glob("*.jpg"))[0]


def test_real_sample_folds_hold_every_image_once_and_no_car_twice(carvana_sample, tmp_path):
    proc = run_script("01_prepare.py", "--input", carvana_sample, "--output", tmp_path, "--n-folds", "4",
                      "--height", "64", "--width", "96", "--workers", "2")
    assert "checked 512 training images of 32 cars" in proc.stdout
    split = pd.read_csv(tmp_path / "folds.csv", dtype={"id": str, "car": str})
    on_disk = sorted(p.stem for p in (carvana_sample / "train").glob("*.jpg"))
    assert sorted(split.id) == on_disk  # every image exactly once
    assert split.groupby("car").fold.nunique().max() == 1  # no car in two folds
    assert sorted(split.fold.unique()) == [0, 1, 2, 3]
    assert split.groupby("fold").car.nunique().tolist() == [8, 8, 8, 8]  # balanced by car
    # a second run keeps the identical split; a different one is refused without --force
    again = run_script("01_prepare.py", "--input", carvana_sample, "--output", tmp_path, "--n-folds", "4",
                       "--height", "64", "--width", "96", "--workers", "2")
    assert "kept identical" in again.stdout


def test_split_is_deterministic_grouped_and_stratified():
    table = pd.DataFrame([(f"{c:012x}_{v:02d}", f"{c:012x}", v, 1000 * c + v)
                          for c in range(20) for v in range(1, 17)], columns=["id", "car", "view", "mask_area"])
    a, b = folds.split(table, 5, seed=1), folds.split(table, 5, seed=1)
    assert a.equals(b)
    assert not a.equals(folds.split(table, 5, seed=2))
    assert a.groupby("car").fold.nunique().max() == 1
    assert a.groupby("fold").car.nunique().tolist() == [4] * 5
    with pytest.raises(PipelineError, match="cannot make 5 car-grouped folds"):
        folds.split(table[table.car.isin(table.car.unique()[:3])], 5, seed=1)


def test_existing_different_split_needs_force(tiny_demo, tmp_path):
    run_script("01_prepare.py", "--input", tiny_demo, "--output", tmp_path, *TINY_FLAGS)
    before = (tmp_path / "folds.csv").read_bytes()
    proc = run_script("01_prepare.py", "--input", tiny_demo, "--output", tmp_path, *TINY_FLAGS, "--n-folds", "4",
                      check=False)
    assert proc.returncode != 0 and "--force" in proc.stderr
    assert (tmp_path / "folds.csv").read_bytes() == before  # nothing lost
    run_script("01_prepare.py", "--input", tiny_demo, "--output", tmp_path, *TINY_FLAGS, "--n-folds", "4", "--force")


def _bad_image_without_mask(root):
    i = first_id(root)
    (root / "train_masks" / files.mask_name(i)).unlink()
    return f"{i}.jpg", "has no mask"


def _bad_mask_without_image(root):
    i = first_id(root)
    (root / "train" / f"{i}.jpg").unlink()
    return files.mask_name(i), "has no image"


def _bad_mask_size(root):
    i = first_id(root)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "train_masks" / files.mask_name(i))
    return files.mask_name(i), "mask is 12x10"


def _bad_nonbinary_mask(root):
    i = first_id(root)
    path = root / "train_masks" / files.mask_name(i)
    m = np.array(Image.open(path)).astype(np.uint8) * 200
    m[0, :5] = [3, 7, 9, 11, 13]
    Image.fromarray(m).save(path)
    return files.mask_name(i), "not binary"


def _bad_truncated_jpeg(root):
    i = first_id(root)
    path = root / "train" / f"{i}.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return f"{i}.jpg", "truncated"


def _bad_unreadable_image(root):
    i = first_id(root)
    (root / "train" / f"{i}.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    return f"{i}.jpg", "not a readable image"


def _bad_zero_byte_mask(root):
    i = first_id(root)
    (root / "train_masks" / files.mask_name(i)).write_bytes(b"")
    return files.mask_name(i), "empty file"


def _bad_empty_folder(root):
    for p in (root / "train").iterdir():
        p.unlink()
    return "train", "no *.jpg files"


def _bad_missing_folder(root):
    shutil.rmtree(root / "train_masks")
    return "train_masks", "folder missing"


def _bad_train_masks_csv(root):
    df = pd.read_csv(root / "train_masks.csv")
    i = files.image_id(df.img[0])
    df.loc[0, "rle_mask"] = "1 5"
    df.to_csv(root / "train_masks.csv", index=False)
    return "train_masks.csv", f"RLE of {i} disagrees"


def _bad_train_masks_csv_columns(root):
    df = pd.read_csv(root / "train_masks.csv").rename(columns={"rle_mask": "mask"})
    df.to_csv(root / "train_masks.csv", index=False)
    return "train_masks.csv", "columns are"


BAD_INPUTS = [_bad_image_without_mask, _bad_mask_without_image, _bad_mask_size, _bad_nonbinary_mask,
              _bad_truncated_jpeg, _bad_unreadable_image, _bad_zero_byte_mask, _bad_empty_folder,
              _bad_missing_folder, _bad_train_masks_csv, _bad_train_masks_csv_columns]


@pytest.mark.parametrize("damage", BAD_INPUTS, ids=[f.__name__[5:] for f in BAD_INPUTS])
def test_bad_input_is_named_and_refused(damage, tiny_demo, tmp_path):
    root = copy_input(tiny_demo, tmp_path / "in put")  # a path with a space, too
    name, reason = damage(root)
    with pytest.raises(PipelineError) as e:
        inputs.check_train(root, workers=0)
    lines = [ln for ln in str(e.value).splitlines() if name in ln and reason in ln]
    assert lines, f"expected a line naming {name} with {reason!r} in:\n{e.value}"


def test_bad_input_cli_one_line_nonzero_exit_and_no_output(tiny_demo, tmp_path):
    root = copy_input(tiny_demo, tmp_path / "input")
    name, reason = _bad_truncated_jpeg(root)
    proc = run_script("01_prepare.py", "--input", root, "--output", tmp_path / "out", *TINY_FLAGS, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert any(name in ln and reason in ln for ln in proc.stderr.splitlines())
    assert not (tmp_path / "out" / "folds.csv").exists()


def test_works_without_optional_csvs_and_skips_stray_files(tiny_demo, tmp_path):
    root = copy_input(tiny_demo, tmp_path / "input")
    (root / "train_masks.csv").unlink()
    (root / "metadata.csv").unlink()
    (root / "train" / "notes.txt").write_text("hello")
    table, notes = inputs.check_train(root, workers=0)
    assert len(table) == 16 * 4
    assert any("notes.txt" in n for n in notes)


def test_rle_csv_of_demo_matches_gifs(tiny_demo):
    df = pd.read_csv(tiny_demo / "train_masks.csv")
    for img, code in zip(df.img[:5], df.rle_mask[:5]):
        mask = inputs.read_mask(tiny_demo / "train_masks" / files.mask_name(files.image_id(img)))
        assert rle.encode(mask) == code
