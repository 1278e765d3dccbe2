"""Caches and maps are keyed by the content of their sources (issue 24, item 2; docs/RELIABILITY.md).

The truth cache, the image cache and every test map record the fingerprint (size, time, digest) of each file they
were made from. A changed source is re-read (the cache rebuilt, the map predicted again) or refused with the
command that repairs it, never trusted because its id is known; a file rewritten with the same bytes stays current.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY_FLAGS, run_script
from lib import cache as cache_mod, files, fingerprint, inputs, testmaps
from lib.fingerprint import Fingerprint
from lib.task import BINARY
from test_failures import EXPERIMENT, FLAGS, H, W, clone, digest, error_line, temp_files  # noqa: F401
from test_repairs import advised, own_input

CACHE_FLAGS = [*TINY_FLAGS, "--height", str(H), "--width", str(W), "--cache", "on"]


def own_copy(tiny_demo: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(input, output) folders: a copy of the tiny demo without train_masks.csv (whose RLEs an edited mask would
    contradict), and an output folder."""
    root = tmp_path / "in put"
    shutil.copytree(tiny_demo, root)
    (root / files.TRAIN_MASKS_CSV).unlink()
    return root, tmp_path / "out put"


def prepare(root: Path, out: Path, *extra: str):
    return run_script("01_prepare.py", "--input", root, "--output", out, *CACHE_FLAGS, *extra)


def truth_of(out: Path, image_id: str) -> np.ndarray:
    """The truth cache's full-resolution mask of ``image_id``, as training reads it."""
    meta = json.loads((out / "cache" / "truth" / "meta.json").read_text())
    row = meta["ids"].index(image_id)
    truth = np.load(out / "cache" / "truth" / "truth.npy", mmap_mode="r")
    return BINARY.unpack_truth(truth[row], tuple(meta["sizes"][row]))


def net_mask_of(out: Path, image_id: str) -> np.ndarray:
    folder = files.cache_dir(out, H, W)
    row = json.loads((folder / "meta.json").read_text())["ids"].index(image_id)
    return np.array(np.load(folder / "masks.npy", mmap_mode="r")[row])


def edit_mask(path: Path, box: tuple[int, int, int, int]) -> np.ndarray:
    """Flip a box of the binary mask (same size, same name), as a new file; return the new mask."""
    mask = inputs.read_mask(path).copy()
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = ~mask[y0:y1, x0:x1]
    path.unlink()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path, format="GIF")
    return mask


def later(path: Path, seconds: int = 5) -> None:
    """Give ``path`` a newer modification time without changing a byte (what a copy or a `touch` does)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


# --- fingerprints ---
def test_fingerprint_stats_first_and_hashes_only_what_changed(tmp_path):
    path = tmp_path / "a.gif"
    path.write_bytes(b"x" * 100)
    fp = fingerprint.of_path(path)
    assert fp.size == 100 and Fingerprint.from_record(fp.record()) == fp == Fingerprint.from_record(fp.text())
    assert fingerprint.recheck(path, fp) == fp  # unchanged: the stat matches
    later(path)
    again = fingerprint.recheck(path, fp)  # same bytes, new time: current, with the new time to record
    assert again is not None and again.digest == fp.digest and again.mtime_ns == fp.mtime_ns + 5 * 10**9
    path.write_bytes(b"y" * 100)  # same size, other bytes
    assert not fingerprint.is_current(path, fp)
    path.unlink()
    assert not fingerprint.is_current(path, fp)
    for bad in (None, [1, 2], "1 2 short", [1, "x", "0" * 32], {"size": 1}):
        assert Fingerprint.from_record(bad) is None


def test_an_instance_folder_is_fingerprinted_through_its_mask_files(tmp_path):
    folder = tmp_path / "car_01"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(folder / "a.png")
    fp = fingerprint.of_path(folder)
    assert fingerprint.is_current(folder, fp)
    Image.fromarray(np.full((4, 6), 255, np.uint8)).save(folder / "b.png")  # another object
    assert not fingerprint.is_current(folder, fp)
    (folder / "b.png").unlink()
    assert fingerprint.of_path(folder).digest == fp.digest


def test_a_map_records_its_images_fingerprint_and_older_maps_are_not_done(tmp_path):
    image = tmp_path / "x.jpg"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(image)
    fp = fingerprint.of_path(image)
    probs = tmp_path / "probs"
    probs.mkdir()
    testmaps.write_map(probs / "x.png", np.zeros((8, 12), np.uint8), (20, 30), fp)
    testmaps.write_map(probs / "old.png", np.zeros((8, 12), np.uint8), (20, 30))  # an older version's map
    assert testmaps.header(probs / "x.png") == ((8, 12), (20, 30), fp)
    assert testmaps.header(probs / "x.png")[:2] == ((8, 12), (20, 30))
    assert testmaps.header(probs / "old.png") == ((8, 12), (20, 30), None)
    assert (testmaps.read_map(probs / "x.png") == 0).all()
    paths = {"x": image, "old": image}
    assert testmaps.finished(probs, ["x", "old"], paths, (8, 12)) == {"x.png"}
    later(image)  # touched: still done (hashed again, same bytes)
    assert testmaps.finished(probs, ["x", "old"], paths, (8, 12)) == {"x.png"}
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(image)  # same size, other content
    assert testmaps.finished(probs, ["x", "old"], paths, (8, 12)) == set()


# --- the truth and image caches ---
def test_an_edited_mask_rebuilds_the_caches_whoever_opens_them(tiny_demo, tmp_path, capsys):
    root, out = own_copy(tiny_demo, tmp_path)
    prepare(root, out)
    ids = sorted(p.stem for p in (root / files.TRAIN).glob("*.jpg"))
    n_sources = 2 * len(ids)
    mask_path = root / files.TRAIN_MASKS / files.mask_name(ids[1])
    before = net_mask_of(out, ids[1])

    # plain 01: the edited mask (same size, same id) is read again, the other files are not changed
    new = edit_mask(mask_path, (0, 40, 0, 60))
    proc = prepare(root, out)
    assert (f"cache: 1 of {n_sources} sources changed since the cache was made ({mask_path}): rebuilding"
            in proc.stdout)
    assert (truth_of(out, ids[1]) == new).all()
    assert not (net_mask_of(out, ids[1]) == before).all()

    # 01 --force does the same
    new = edit_mask(mask_path, (100, 160, 150, 240))
    assert "rebuilding" in prepare(root, out, "--force").stdout
    assert (truth_of(out, ids[1]) == new).all()

    # 02 (or 03) opening the cache: rebuilt before training reads it
    new = edit_mask(mask_path, (60, 90, 0, 240))
    capsys.readouterr()
    data = cache_mod.open_cache(root, out, ids, H, W, workers=0, mode="on")
    assert f"cache: 1 of {n_sources} sources changed" in capsys.readouterr().out
    assert (data.full_mask(1) == new).all()
    assert (data.masks[1] == BINARY.net_target(new, H, W)).all()
    meta = json.loads((out / "cache" / "truth" / "meta.json").read_text())
    assert meta["sources"]["files"][f"{files.TRAIN_MASKS}/{mask_path.name}"] == fingerprint.of_path(mask_path).record()


def test_a_source_touched_without_changing_its_bytes_keeps_the_cache(tiny_demo, tmp_path, capsys):
    root, out = own_copy(tiny_demo, tmp_path)
    prepare(root, out)
    ids = sorted(p.stem for p in (root / files.TRAIN).glob("*.jpg"))
    arrays = {p: os.stat(p).st_ino for p in (out / "cache").rglob("*.npy")}
    image, mask = root / files.TRAIN / f"{ids[0]}.jpg", root / files.TRAIN_MASKS / files.mask_name(ids[0])
    later(image)
    proc = prepare(root, out)  # 01 compares the digests of what it has just read
    assert "rebuilding" not in proc.stdout and "caching" not in proc.stdout
    later(mask)
    cache_mod.open_cache(root, out, ids, H, W, workers=0, mode="on")  # 02: stat, hash the one file that changed
    assert "rebuilding" not in capsys.readouterr().out
    assert {p: os.stat(p).st_ino for p in (out / "cache").rglob("*.npy")} == arrays  # no array written again
    for folder in (out / "cache" / "truth", files.cache_dir(out, H, W)):  # the records carry the new times
        recorded = json.loads((folder / "meta.json").read_text())["sources"]["files"]
        assert recorded[f"{files.TRAIN}/{image.name}"][1] == os.stat(image).st_mtime_ns
        assert recorded[f"{files.TRAIN_MASKS}/{mask.name}"][1] == os.stat(mask).st_mtime_ns


def test_an_image_and_mask_of_another_size_are_read_again_and_training_runs(tiny_demo, tmp_path):
    root, out = own_copy(tiny_demo, tmp_path)
    args = ["--input", root, "--output", out, *FLAGS, "--cache", "off"]  # training decodes and checks each image
    run_script("01_prepare.py", *args)
    ids = sorted(p.stem for p in (root / files.TRAIN).glob("*.jpg"))

    def resize(image_id: str, size: tuple[int, int]) -> None:
        image, mask = root / files.TRAIN / f"{image_id}.jpg", root / files.TRAIN_MASKS / files.mask_name(image_id)
        Image.open(image).resize(size).save(image, quality=95)
        Image.open(mask).resize(size, Image.NEAREST).save(mask, format="GIF")

    resize(ids[2], (320, 200))
    proc = run_script("01_prepare.py", *args, "--force")
    assert f"cache: 2 of {2 * len(ids)} sources changed" in proc.stdout and "rebuilding" in proc.stdout
    assert json.loads((out / "cache" / "truth" / "meta.json").read_text())["sizes"][2] == [200, 320]
    run_script("02_train.py", "--fold", "0", *args)
    # without 01: 02 opening the cache reads the changed files again, then trains
    resize(ids[5], (300, 180))
    proc = run_script("02_train.py", "--fold", "1", *args)
    assert f"cache: 2 of {2 * len(ids)} sources changed" in proc.stdout
    assert json.loads((out / "cache" / "truth" / "meta.json").read_text())["sizes"][5] == [180, 300]


# --- test maps ---
def test_a_test_image_changed_after_its_map_is_refused_by_04_and_predicted_again_by_03(trained, tmp_path):
    root = own_input(trained, tmp_path)  # a copy keeps the files' times: the maps stay current
    out = clone(trained, tmp_path)
    args = ["--input", root, "--output", out, *FLAGS]
    run = files.run_dir(out, EXPERIMENT)
    probs = run / files.TEST_PROBS
    assert f"{len(trained.ids)} of {len(trained.ids)} maps already done" in run_script("03_predict.py", *args).stdout

    # same size, other content: 04 refuses, naming the image and the command that repairs it
    changed = root / files.TEST / f"{trained.ids[1]}.jpg"
    Image.open(changed).transpose(Image.FLIP_LEFT_RIGHT).save(changed, quality=95)
    before = digest(run)
    line = error_line(run_script("04_submit.py", *args, check=False))
    assert f"{changed}: has changed since its map {probs / changed.with_suffix('.png').name} was made" in line
    assert "`" in line and "03_predict.py" in line
    assert digest(run) == before and temp_files(run) == [] and not (run / "submission.csv.gz").exists()
    proc = run_script("03_predict.py", *advised(line, "03_predict.py"))
    assert f"{len(trained.ids) - 1} of {len(trained.ids)} maps already done" in proc.stdout
    assert testmaps.header(probs / f"{trained.ids[1]}.png")[2] == fingerprint.of_path(changed)
    run_script("04_submit.py", *args)

    # touched without a change: current for 03 (nothing predicted) and for 04
    later(root / files.TEST / f"{trained.ids[2]}.jpg")
    assert f"{len(trained.ids)} of {len(trained.ids)} maps already done" in run_script("03_predict.py", *args).stdout
    run_script("04_submit.py", *args)

    # a map of an older version (no fingerprint): refused by 04, predicted again by 03
    old = probs / f"{trained.ids[3]}.png"
    prob = testmaps.read_map(old)
    old.unlink()
    testmaps.write_map(old, prob, testmaps.header(probs / f"{trained.ids[0]}.png")[1])
    line = error_line(run_script("04_submit.py", *args, check=False))
    assert f"{old}: records no fingerprint of its image" in line
    proc = run_script("03_predict.py", *advised(line, "03_predict.py"))
    assert f"{len(trained.ids) - 1} of {len(trained.ids)} maps already done" in proc.stdout
    assert old.read_bytes() == (trained.reference / old.name).read_bytes()  # the same image: the same map
    run_script("04_submit.py", *args)
