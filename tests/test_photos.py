"""03_predict.py --images on a user's own photos: the README's command after the demo, the runs listed when no model
is found (each listed command runs), one bad file never stopping a batch, and '**' globs."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import zlib
from pathlib import Path

import pandas as pd

from conftest import PYTHON, ROOT, run_script
from lib import files
from test_failures import EXPERIMENT, clone, error_line
from test_outputs import commands_in, run_named


def good_photos(trained, folder: Path, n: int = 2) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for image_id in trained.ids[:n]:
        out.append(folder / f"photo {image_id}.jpg")
        shutil.copy(trained.root / files.TEST / f"{image_id}.jpg", out[-1])
    return out


def readme_photo_command() -> list[str]:
    """The command the README gives for predicting one's own photos with the demo's models."""
    text = (ROOT / "README.md").read_text()
    found = [c for c in re.findall(r"^\s*(\.venv/bin/python 03_predict\.py [^\n`]*--images photos/[^\n`]*)$", text,
                                   re.M)]
    assert found, "README gives no `.venv/bin/python 03_predict.py ... --images photos/ ...` line"
    return shlex.split(found[0])


def test_the_readme_photo_command_runs_as_printed_after_the_demo(trained, tmp_path):
    cmd = readme_photo_command()
    assert cmd[cmd.index("--preset") + 1] == "demo"  # the demo's flags, as `make demo` gave them
    demo_out, demo_in = Path(cmd[cmd.index("--output") + 1]), Path(cmd[cmd.index("--input") + 1])
    assert (demo_out, demo_in) == (Path("output/demo"), Path("input/demo"))
    # the printed command in a folder laid out as after `make demo` (its run = the tiny finished one)
    work = tmp_path / "clone"
    (work / "output").mkdir(parents=True)
    shutil.move(clone(trained, tmp_path), work / demo_out)
    (work / "input").mkdir()
    (work / demo_in).symlink_to(trained.root)
    good_photos(trained, work / "photos")
    # a process of its own: the command runs where the user's output/ and photos/ are (the repository root for them)
    proc = subprocess.run([PYTHON, ROOT / cmd[1], *cmd[2:], "--workers", "0"], cwd=work, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(work / "masks" / "masks.csv")
    assert len(rows) == 2 and (work / "masks" / f"photo {trained.ids[0]}_mask.png").exists(), proc.stdout


def test_no_model_lists_the_runs_found_and_each_listed_command_predicts(trained, tmp_path):
    base = tmp_path / "where"
    (base / "output").mkdir(parents=True)
    shutil.move(clone(trained, tmp_path, with_maps=False), base / "output" / "demo")  # output/demo/demo, as make demo
    other = base / "output_old" / "mine"
    shutil.copytree(files.run_dir(trained.out, EXPERIMENT), other, copy_function=shutil.copy)  # beside: output_old/
    photos = good_photos(trained, tmp_path / "photos", 1)
    masks = tmp_path / "masks"
    proc = run_script("03_predict.py", "--preset", "demo", "--output", base / "output", "--images", photos[0],
                      "--images-out", masks, "--workers", "0", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{base / 'output' / 'demo'}: no trained model" in proc.stderr and not masks.exists()
    line = error_line(proc)  # one line, each run found with its command
    runs = (base / "output" / "demo" / "demo", other)
    assert all(f"{run} (fold(s) 0,1): `" in line for run in runs) and line.index(str(runs[0])) < line.index(str(other))
    listed = commands_in(line)
    assert len(listed) == len(runs), line
    for cmd, run in zip(listed, runs):
        assert cmd[cmd.index("--output") + 1] == str(run.parent) and cmd[cmd.index("--experiment") + 1] == run.name
        assert cmd[cmd.index("--preset") + 1] == "demo" and cmd[cmd.index("--images-out") + 1] == str(masks)
        shutil.rmtree(masks, ignore_errors=True)
        run_named(cmd)
        assert len(pd.read_csv(masks / "masks.csv")) == 1


def broken_files(folder: Path, good: Path) -> dict[str, str]:
    """Files that cannot be predicted, each kind once: name -> a word of the reason the skip line gives."""
    raw = good.read_bytes()
    (folder / "text.jpg").write_text("not a photo at all")
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "a folder.png").mkdir()
    import cv2
    import numpy as np
    ok, png = cv2.imencode(".png", np.full((40, 60, 3), 128, np.uint8))
    data = bytearray(png.tobytes())
    at = data.index(b"IDAT") + 4  # the header stays sound, the compressed pixels are noise (CRC made to match)
    length = int.from_bytes(data[at - 8: at - 4], "big")
    data[at: at + length] = bytes((b * 37 + 11) % 256 for b in range(length))
    data[at + length: at + length + 4] = zlib.crc32(bytes(data[at - 4: at + length])).to_bytes(4, "big")
    (folder / "bad pixels.png").write_bytes(bytes(data))
    return {"text.jpg": "not a readable image", "truncated.jpg": "truncated", "empty.png": "empty",
            "a folder.png": "a folder", "bad pixels.png": "not a readable image"}


def test_unreadable_files_are_skipped_named_and_counted_and_the_good_photos_predicted(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    photos = tmp_path / "photos"
    good = good_photos(trained, photos, 2)
    bad = broken_files(photos, good[0])
    masks = tmp_path / "masks"
    proc = run_script("03_predict.py", "--input", trained.root, "--output", out, "--preset", "demo", "--images",
                      photos, "--images-out", masks, "--workers", "0")
    skips = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skips) == len(bad), proc.stderr
    for name, why in bad.items():
        assert sum(str(photos / name) in line and why in line for line in skips) == 1, (name, skips)
    assert "0x" not in "".join(skips)  # no object addresses in the reasons
    assert f"skipped {len(bad)} of {len(bad) + 2} file(s)" in proc.stdout
    rows = pd.read_csv(masks / "masks.csv")
    assert sorted(rows.img) == sorted(p.name for p in good)
    assert sorted(p.name for p in masks.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{p.stem}_{kind}" for p in good for kind in ("mask.png", "overlay.jpg")] + ["masks.csv"])
    # a photo that became unreadable since an earlier run: its old mask and overlay go, the good ones stay
    shutil.copy(good[1], photos / "text.jpg")
    run_script("03_predict.py", "--input", trained.root, "--output", out, "--preset", "demo", "--images", photos,
               "--images-out", masks, "--workers", "0")
    (photos / "text.jpg").write_text("broken again")
    run_script("03_predict.py", "--input", trained.root, "--output", out, "--preset", "demo", "--images", photos,
               "--images-out", masks, "--workers", "0")
    assert not (masks / "text_mask.png").exists() and "text.jpg" not in set(pd.read_csv(masks / "masks.csv").img)


def test_a_batch_of_only_unreadable_files_fails_after_naming_each(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    bad = broken_files(photos, trained.root / files.TEST / f"{trained.ids[0]}.jpg")
    masks = tmp_path / "masks"
    proc = run_script("03_predict.py", "--input", trained.root, "--output", out, "--preset", "demo", "--images",
                      photos, "--images-out", masks, "--workers", "2", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert sum(line.startswith("skipped ") for line in proc.stderr.splitlines()) == len(bad)
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: none of the {len(bad)} photos could be read")
    assert not (masks / "masks.csv").exists()


def test_a_double_star_glob_finds_photos_in_every_subfolder(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    top = tmp_path / "trip"
    found = good_photos(trained, top, 1) + good_photos(trained, top / "day 2" / "evening", 1)
    found[1] = found[1].rename(found[1].with_name("late.jpg"))
    masks = tmp_path / "masks"
    run_script("03_predict.py", "--input", trained.root, "--output", out, "--preset", "demo", "--images",
               f"{top}/**/*.jpg", "--images-out", masks, "--workers", "0")
    assert sorted(pd.read_csv(masks / "masks.csv").img) == sorted(p.name for p in found)
