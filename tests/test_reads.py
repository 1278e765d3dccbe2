"""Every file a stage reads is checked by shape and type before use (issue 24; docs/RELIABILITY.md).

A damaged stage file (0 bytes, not JSON, ``[]``, a key of the wrong type, a missing key; a checkpoint missing a key
or holding a state that does not fit; a garbled log.csv) gives exit 1 and one ``error:`` line naming the file and
the commands that repair it, and changes no file. For one kind of damage per file the commands are then run as
printed, in order, and the refused command succeeds; for the other kinds the advice must name the same steps.
Damage that needs no repair is handled by the stage itself: a damaged oof.npz is predicted again from model.pt
(with a note), a damaged cache meta.json means a stale cache (built again), params.json files are never read.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
import torch

from conftest import PYTHON, ROOT, run_script
from lib import cache as cache_mod, files
from lib.oof import load_oof
from lib.task import BINARY
from test_failures import EXPERIMENT, FLAGS, clone, digest, error_line, replace_file  # noqa: F401


def args_for(t, out) -> list:
    return ["--input", t.root, "--output", out, *FLAGS]


def refused(script: str, args: list, folder, path) -> str:
    """Run ``script``: exit 1, one ``error:`` line on stderr (no traceback), naming ``path``; no file under
    ``folder`` changed. Returns the line."""
    before = digest(folder)
    proc = run_script(script, *args, check=False)
    line = error_line(proc)
    assert [ln for ln in re.split(r"[\r\n]+", proc.stderr) if ln.startswith("error:")] == [line], proc.stderr
    assert f"{path}:" in line, line
    assert digest(folder) == before, f"{script} changed files"
    return line


def advised(line: str) -> list[list[str]]:
    """The commands the line names in backticks, split as a shell would."""
    commands = [shlex.split(c) for c in line.split("`")[1::2]]
    assert commands, line
    return commands


def repair(line: str, run: bool) -> list[str]:
    """The repair steps the line names (``scripts``); with ``run``, every command run as printed, in order (cwd: the
    repository root). The round trip is run for one kind of damage per file: the advice, and the repair (which
    writes the file anew), do not depend on the kind; the other kinds check that their advice names the same steps."""
    commands = advised(line)
    for words in commands if run else []:
        if words[0] == "python" and shutil.which("python") is None:  # shown when run by a python outside the repo
            words = [PYTHON, *words[1:]]
        proc = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{words}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return scripts(commands)


def scripts(commands: list[list[str]]) -> list[str]:
    """Each command as its script and the flags that make it a repair: '02_train.py --fold 1 --restart'."""
    found = []
    for c in commands:
        words = [os.path.basename(c[1])]
        for i, w in enumerate(c[2:], 2):
            words += [w] if w in ("--restart", "--replace") else [w, c[i + 1]] if w == "--fold" else []
        found.append(" ".join(words))
    return found


# --- JSON files of 03 and 04: tuning.json, test_probs/meta.json ---
def damage_json(path, damage: str, key: str, wrong, required: str) -> None:
    record = json.loads(path.read_text())
    if damage == "wrong type":
        record[key] = wrong
    elif damage == "missing key":
        del record[required]
    data = {"0 bytes": b"", "not JSON": b'{"models": [', "[]": b"[]"}.get(damage)
    replace_file(path, data if data is not None else json.dumps(record).encode())


JSON_FILES = {  # file: (a key, a value of the wrong type for it, a key that must be there)
    files.TUNING: ("task", "binary", "threshold"),
    f"{files.TEST_PROBS}/{files.PROBS_META}": ("models", "fold models", "size"),
}
JSON_DAMAGE = ["0 bytes", "not JSON", "[]", "wrong type", "missing key"]


@pytest.mark.parametrize("damage", JSON_DAMAGE)
@pytest.mark.parametrize("name", list(JSON_FILES))
def test_a_damaged_json_file_is_one_line_and_the_named_command_repairs_it(trained, tmp_path, name, damage):
    out = clone(trained, tmp_path)
    run = files.run_dir(out, EXPERIMENT)
    path = run / name
    damage_json(path, damage, *JSON_FILES[name])
    line = refused("04_submit.py", args_for(trained, out), out, path)
    if name == files.TUNING:
        assert "tune again: `" in line
    else:  # 03 refuses it too, with the same repair; --replace alone repairs it
        assert "--replace" in advised(line)[0]
        line03 = refused("03_predict.py", args_for(trained, out), out, path)
        assert scripts(advised(line03)) == scripts(advised(line))
    round_trip = damage == ("wrong type" if name == files.TUNING else "0 bytes")
    assert repair(line, round_trip) == (["03_predict.py"] if name == files.TUNING else ["03_predict.py --replace"])
    if round_trip:
        run_script("04_submit.py", *args_for(trained, out))
        assert json.loads(path.read_text())  # written again, whole


# --- checkpoints: model.pt (read by 03), last.pt (read by 02 --resume) ---
def damage_checkpoint(path, damage: str) -> None:
    if damage == "0 bytes":
        return replace_file(path, b"")
    ckpt = torch.load(path, weights_only=True)
    if damage == "missing key":
        del ckpt["optimizer" if "optimizer" in ckpt else "model"]
    elif damage == "wrong type":
        ckpt["epoch" if "optimizer" in ckpt else "task"] = "1"
    elif damage == "weights not tensors":
        ckpt["model"] = {name: "x" for name in ckpt["model"]}
    elif damage == "state does not fit":
        ckpt["optimizer" if "optimizer" in ckpt else "params"] = {"state": {}, "param_groups": []} \
            if "optimizer" in ckpt else {"lr": "fast"}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    replace_file(path, buf.getvalue())


CKPT_DAMAGE = ["0 bytes", "missing key", "wrong type", "weights not tensors", "state does not fit"]


@pytest.mark.parametrize("damage", CKPT_DAMAGE)
def test_a_damaged_model_pt_names_every_repair_step_and_they_repair_it(trained, tmp_path, damage):
    out = clone(trained, tmp_path)  # with test maps: retraining the fold also needs 03 --replace
    path = files.fold_dir(out, EXPERIMENT, 1) / files.BEST
    damage_checkpoint(path, damage)
    line = refused("03_predict.py", args_for(trained, out), out, path)
    round_trip = damage == "0 bytes"
    assert repair(line, round_trip) == ["02_train.py --fold 1 --restart", "03_predict.py --replace"]
    if round_trip:
        run_script("03_predict.py", *args_for(trained, out))
        run_script("04_submit.py", *args_for(trained, out))


LOG_DAMAGE = {"0 bytes": b"", "garbage": b"\xff\xfe\x00garbage\x81\n", "wrong columns": b"a,b\n1,2\n",
              "not numbers": b"epoch,lr,train_loss,val_loss,val_dice,seconds,images_per_s,val_dice_raw\n"
                             b"one,x,y,z,w,v,u,\n"}


@pytest.mark.parametrize("name,damage", [(files.LAST, d) for d in CKPT_DAMAGE] + [(files.LOG, d) for d in LOG_DAMAGE])
def test_a_damaged_file_of_a_resumed_run_is_one_line_and_restart_repairs_it(trained, tmp_path, name, damage):
    out = clone(trained, tmp_path, with_maps=False)  # no test maps: the repair is the restart alone
    path = files.fold_dir(out, EXPERIMENT, 0) / name
    if name == files.LOG:
        replace_file(path, LOG_DAMAGE[damage])
    else:
        damage_checkpoint(path, damage)
    resume = ["--fold", "0", *args_for(trained, out), "--resume"]
    line = refused("02_train.py", resume, out, path)
    round_trip = damage in ("missing key", "garbage")
    assert repair(line, round_trip) == ["02_train.py --fold 0 --restart"]
    if round_trip:
        proc = run_script("02_train.py", *resume)
        assert "resumed after epoch 1" in proc.stdout


def test_params_json_files_are_records_no_stage_reads(trained, tmp_path):
    out = clone(trained, tmp_path, with_maps=False)
    paths = [files.fold_dir(out, EXPERIMENT, 0) / files.PARAMS, files.run_dir(out, EXPERIMENT) / files.PARAMS]
    for path in paths:
        replace_file(path, b"[]")
    run_script("02_train.py", "--fold", "0", *args_for(trained, out), "--resume")
    assert all(json.loads(p.read_text())["epochs"] == 1 for p in paths)  # written again by the accepted run


# --- out-of-fold maps: a damaged oof.npz is predicted again from model.pt, like one of another model ---
def _garbled_map(path):
    import numpy as np
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["png"] = arrays["png"].copy()
    arrays["png"][int(arrays["ends"][0]) + 1] ^= 0xFF  # the second map's PNG signature
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


OOF_DAMAGE = {"0 bytes": lambda p: b"", "not npz": lambda p: b"PK\x03\x04 not a zip",
              "cut short": lambda p: p.read_bytes()[: p.stat().st_size // 2], "garbled map": _garbled_map}


@pytest.mark.parametrize("damage", list(OOF_DAMAGE))
def test_a_damaged_oof_file_is_predicted_again_with_a_note(trained, tmp_path, damage):
    out = clone(trained, tmp_path, with_maps=False)
    path = files.fold_dir(out, EXPERIMENT, 0) / files.OOF
    replace_file(path, OOF_DAMAGE[damage](path))
    with pytest.raises(Exception, match=re.escape(str(path))):
        load_oof(path)
    data = path.read_bytes()
    proc = run_script("03_predict.py", *args_for(trained, out), "--retune")
    assert f"note: {path}: " in proc.stdout and "predicting its out-of-fold maps now" in proc.stdout
    assert path.read_bytes() == data  # left as it is
    tuned = json.loads((files.run_dir(out, EXPERIMENT) / files.TUNING).read_text())
    reference = json.loads((trained.run / files.TUNING).read_text())
    assert tuned["scores"][0]["dice"] == pytest.approx(reference["scores"][0]["dice"], abs=1e-3)


# --- the cache's meta.json: damaged means stale, built again ---
@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b'"x"', b'{"version": "3"}'])
def test_a_damaged_cache_meta_is_stale_and_built_again(trained, tmp_path, content):
    out = clone(trained, tmp_path, with_maps=False)
    ids = sorted(p.stem for p in (trained.root / files.TRAIN).glob("*.jpg"))
    truth = out / "cache" / "truth" / "meta.json"
    assert cache_mod._current(truth.parent, ids, "", BINARY) is not None
    replace_file(truth, content)
    assert cache_mod._current(truth.parent, ids, "", BINARY) is None
    cache = cache_mod.open_cache(trained.root, out, ids, 32, 64, workers=1, mode="off")
    assert cache_mod._current(truth.parent, ids, "", BINARY) is not None and cache.full_mask(0).any()
