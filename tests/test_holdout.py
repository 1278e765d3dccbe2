"""bench_recipe.py --holdout's pure parts (benchmarks/holdout.py): the input folder of links that keeps a fold's cars
out, and the scorer of the submission written for them."""
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT
from lib import files, inputs, rle, submission
from lib.errors import PipelineError

sys.path.insert(0, str(ROOT / "benchmarks"))
import holdout  # noqa: E402

CARS = ["aaa", "bbb", "ccc", "ddd"]
H, W = 12, 20


def car_mask(k: int) -> np.ndarray:
    """A rectangle of its own size per car index ``k`` (view 2 of car 0: empty)."""
    m = np.zeros((H, W), bool)
    m[2:4 + k, 3:6 + 2 * k] = True
    return m


@pytest.fixture
def sample(tmp_path):
    """A sample in Carvana's names: 4 cars x 2 views, JPEG photos, 0/1 GIF masks, a sample_submission.csv."""
    root = tmp_path / "sample"
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    for k, car in enumerate(CARS):
        for view in (1, 2):
            image_id = f"{car}_{view:02d}"
            Image.fromarray(np.full((H, W, 3), 40 * k, np.uint8)).save(root / "train" / f"{image_id}.jpg")
            mask = car_mask(k) if (k, view) != (0, 2) else np.zeros((H, W), bool)
            Image.fromarray(mask.astype(np.uint8)).save(root / "train_masks" / files.mask_name(image_id))
    (root / files.SAMPLE_SUBMISSION).write_text("img,rle_mask\nzzz_01.jpg,1 1\nzzz_02.jpg,1 1\n")
    split = pd.DataFrame({"id": [f"{c}_{v:02d}" for c in CARS for v in (1, 2)],
                          "car": [c for c in CARS for _ in (1, 2)], "view": [1, 2] * 4,
                          "fold": [0, 0, 1, 1, 0, 0, 1, 1]})  # fold 1: cars bbb and ddd
    return root, split


def test_input_links_only_the_other_cars_and_tests_on_the_kept_out_ones(sample, tmp_path):
    root, split = sample
    out = tmp_path / "work" / "input"
    kept = holdout.build_input(root, split, 1, out)
    assert kept == ["bbb_01", "bbb_02", "ddd_01", "ddd_02"]
    train = sorted(out.glob("train/*"))
    assert [p.name for p in train] == ["aaa_01.jpg", "aaa_02.jpg", "ccc_01.jpg", "ccc_02.jpg"]
    assert sorted(p.name for p in out.glob("train_masks/*")) == [files.mask_name(f"{c}_{v:02d}") for c in ("aaa", "ccc")
                                                                 for v in (1, 2)]
    assert sorted(p.name for p in out.glob("test/*")) == [f"{i}.jpg" for i in kept]
    for folder, source in (("train", "train"), ("train_masks", "train_masks"), ("test", "train")):
        for link in (out / folder).iterdir():  # a link per file, to the sample's own file: nothing copied
            assert link.is_symlink() and link.resolve() == (root / source / link.name).resolve()
    assert not any(c in p.name for p in out.glob("train*/*") for c in ("bbb", "ddd"))
    assert [p.name for p in out.iterdir() if not p.is_symlink() and p.is_file()] == [files.SAMPLE_SUBMISSION]
    text = (out / files.SAMPLE_SUBMISSION).read_text()
    assert text == "img,rle_mask\n" + "".join(f"{i}.jpg,1 1\n" for i in kept)
    assert inputs.check_test(out)[0] == kept  # what 01/03/04 read: every listed image is in test/
    pairs, problems = inputs.train_pairs(out)
    assert sorted(pairs) == ["aaa_01", "aaa_02", "ccc_01", "ccc_02"] and not problems
    with pytest.raises(PipelineError, match="exists"):
        holdout.build_input(root, split, 0, out)


def test_a_sample_submission_of_another_form_is_refused(sample, tmp_path):
    root, split = sample
    (root / files.SAMPLE_SUBMISSION).write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 1\n")
    with pytest.raises(PipelineError, match="img,rle_mask"):
        holdout.build_input(root, split, 1, tmp_path / "in")
    assert not (tmp_path / "in").exists()


def write(path, ids, masks):
    """A submission by the project's own writer and encoder."""
    submission.write(path, [f"{i}.jpg" for i in ids], [rle.encode(m) for m in masks], {}, path.parent / "none.csv")


def test_scores_of_known_masks(sample, tmp_path):
    root, split = sample
    ids = sorted(split.id)
    truths = {i: root / "train_masks" / files.mask_name(i) for i in ids}
    masks = [inputs.read_mask(truths[i]) for i in ids]
    exact = tmp_path / "exact.csv.gz"
    write(exact, ids, masks)
    assert holdout.score(exact, truths) == {i: 1.0 for i in ids}  # aaa_02's empty truth, empty prediction: 1
    empty = tmp_path / "empty.csv.gz"
    write(empty, ids, [np.zeros((H, W), bool)] * len(ids))
    dices = holdout.score(empty, truths)
    assert dices["aaa_02"] == 1.0 and all(d == 0.0 for i, d in dices.items() if i != "aaa_02")
    half = tmp_path / "half.csv.gz"
    cut = [m.copy() for m in masks]
    cut[ids.index("ccc_01")][:, :7] = False  # ccc: columns 7..9 of 3..9 stay (3 of 7)
    write(half, ids, cut)
    assert holdout.score(half, truths)["ccc_01"] == pytest.approx(2 * 3 / (3 + 7))
    summary = holdout.summarize(holdout.score(half, truths), split)
    assert summary["worst_car"] == "ccc" and summary["worst_car_dice"] == pytest.approx((0.6 + 1) / 2)
    assert summary["mean"] == pytest.approx((7 + 0.6) / 8) and summary["cars"]["aaa"] == 1.0
    assert summary["p5"] == pytest.approx(np.percentile([1] * 7 + [0.6], 5))


def test_a_submission_of_other_ids_or_sizes_is_refused(sample, tmp_path):
    root, split = sample
    ids = sorted(split.id)
    truths = {i: root / "train_masks" / files.mask_name(i) for i in ids}
    short = tmp_path / "short.csv.gz"
    write(short, ids[:-1], [np.zeros((H, W), bool)] * (len(ids) - 1))
    with pytest.raises(PipelineError, match=r"7 rows for the 8 held-out images \(missing: ddd_02"):
        holdout.score(short, truths)
    wide = tmp_path / "wide.csv.gz"
    write(wide, ids, [np.ones((H, W + 5), bool)] * len(ids))
    with pytest.raises(PipelineError, match="bad RLE for aaa_01"):
        holdout.score(wide, truths)


@pytest.mark.parametrize("text, error", [("0,2", None), ("3", None), ("4", "folds 0..3 .*not 4"),
                                         ("0,x", "give fold numbers"), ("1,1", "named twice")])
def test_groups(text, error):
    if error is None:
        assert holdout.parse_groups(text, 4) == [int(g) for g in text.split(",")]
    else:
        with pytest.raises(ValueError, match=error):
            holdout.parse_groups(text, 4)


def holdout_json(cars: dict[str, float], flags: list[str]) -> dict:
    """The part of a holdout.json that compare_holdout.py reads: two groups of cars."""
    names = sorted(cars)
    return {"flags": flags, "groups": [{"group": g, "cars": {c: cars[c] for c in names[g::2]}} for g in (0, 1)]}


def test_paired_difference_cancels_the_spread_between_cars():
    """B is A + 0.002 on every car while the cars themselves spread over 0.05: the difference is exactly 0.002 and its
    interval collapses onto it; a car better and one worse show in the counts and widen the interval around the
    mean."""
    a = {f"car{k}": 0.93 + 0.005 * k for k in range(10)}
    same = holdout.paired(holdout_json(a, []), holdout_json({c: d + 0.002 for c, d in a.items()}, ["--x"]), draws=500)
    assert same["diff"] == pytest.approx(0.002) and same["low"] == pytest.approx(0.002)
    assert same["high"] == pytest.approx(0.002) and (same["better"], same["worse"]) == (10, 0)
    mixed = dict(a, car0=a["car0"] + 0.01, car1=a["car1"] - 0.004)
    r = holdout.paired(holdout_json(a, []), holdout_json(mixed, []), draws=2000)
    assert r["diff"] == pytest.approx(0.0006) and (r["better"], r["worse"]) == (1, 1)
    assert r["low"] < 0 < r["diff"] < r["high"]


def test_paired_refuses_runs_on_other_cars():
    a = {f"car{k}": 0.98 for k in range(4)}
    b = dict(a)
    b["other"] = b.pop("car3")
    with pytest.raises(PipelineError, match="only in the first: car3; only in the second: other; 3 in both"):
        holdout.paired(holdout_json(a, []), holdout_json(b, []))
    r = holdout.paired(holdout_json(a, []), holdout_json(dict(b, car0=0.99), []), draws=100, common=True)
    assert r["n_cars"] == 3 and r["diff"] == pytest.approx(0.01 / 3) and r["better"] == 1


def compare(*args, check=True):
    import subprocess
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_holdout.py"), *map(str, args)],
                          capture_output=True, text=True, check=check, cwd=ROOT)


def test_runs_on_other_cars_are_refused_with_the_command_that_compares_them(tmp_path):
    import json
    import shlex
    a = {f"car{k}": 0.97 + 0.001 * k for k in range(8)}
    b = {c: d + 0.002 for c, d in list(a.items())[:4]}  # B held out half of A's cars (one of its groups)
    (tmp_path / "a.json").write_text(json.dumps(holdout_json(a, [])))
    (tmp_path / "b.json").write_text(json.dumps({"flags": ["--epochs", "3"], "groups": [{"group": 1, "cars": b}]}))
    refused = compare(tmp_path / "a.json", tmp_path / "b.json", "--draws", "50", check=False)
    assert refused.returncode != 0 and refused.stdout == "" and refused.stderr.count("\n") == 1
    repair = refused.stderr.split("`")[1]
    assert repair.endswith("--common")
    done = subprocess_run(repair)
    assert "compared on the cars both runs held out (--common): A held out 8, B 4" in done
    assert "4 held-out cars" in done and "B - A +0.00200" in done
    other = {f"x{k}": 0.98 for k in range(3)}  # no car in common: B's recipe held out on A's groups
    (tmp_path / "c.json").write_text(json.dumps({"flags": ["--epochs", "3"], "groups": [{"group": 2, "cars": other}]}))
    refused = compare(tmp_path / "a.json", tmp_path / "c.json", check=False)
    words = shlex.split(refused.stderr.split("`")[1])
    assert words[1:5] == ["benchmarks/bench_recipe.py", "--holdout", "0,1", "--keep"]
    assert words[5] == f"{tmp_path}-on-groups-0-1" and words[6:] == ["--", "--epochs", "3"]


def subprocess_run(command: str) -> str:
    import shlex
    import subprocess
    return subprocess.run(shlex.split(command), capture_output=True, text=True, check=True, cwd=ROOT).stdout


def test_compare_holdout_prints_the_estimate_from_a_measured_score(tmp_path):
    import json
    import subprocess
    a = {f"car{k}": 0.97 + 0.001 * k for k in range(6)}
    for name, cars in (("a", a), ("b", {c: d + 0.003 for c, d in a.items()})):
        (tmp_path / f"{name}.json").write_text(json.dumps(holdout_json(cars, [] if name == "a" else ["--y", "2"])))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_holdout.py"), str(tmp_path / "a.json"),
                          str(tmp_path / "b.json"), "--measured", "0.98", "--draws", "200"],
                         capture_output=True, text=True, check=True).stdout
    assert "B - A +0.00300 (90% interval +0.00300 to +0.00300" in out and "B: --y 2" in out
    assert "B on the unseen cars A scored 0.98000 on: 0.98300" in out
