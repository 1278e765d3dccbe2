"""Several processes: torchrun training (DDP, gloo on CPU), sharded validation and test inference, shards as
separate jobs, a killed rank, resume under torchrun, and one writer per fold folder."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import params
from conftest import ROOT, STOP_AT, TINY_FLAGS, run_script, start_stopped, stop_env, wait_stopped
from lib import files
from lib.data import SeededShuffle
from lib.errors import PipelineError
from lib.model import read_checkpoint
from lib.oof import load_oof
from lib.runtime import Dist, shard_of
from lib.train import setup

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture
def prepared(tiny_demo, tiny_prepared, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_prepared, out)
    return tiny_demo, out


def torchrun(script: str, *args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([*TORCHRUN, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun {script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def flags(root, out, *extra):
    return ["--input", root, "--output", out, *TINY_FLAGS, *extra]


# --- the schedule ---
@pytest.mark.parametrize("world, batch", [(2, 8), (4, 8), (3, 6)])
def test_rank_shards_of_each_global_batch_are_the_single_process_batch(world, batch):
    rows = np.arange(100, 137)  # 37 rows: the last global batch is incomplete and dropped
    one = list(SeededShuffle(rows, seed=5))
    for epoch in (0, 3):
        single = SeededShuffle(rows, seed=5)
        single.set_epoch(epoch)
        one = list(single)
        shards = []
        for rank in range(world):
            s = SeededShuffle(rows, seed=5, rank=rank, world=world, batch=batch)
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(shards[-1]) == len(s) == len(rows) // batch * (batch // world)
        per = batch // world
        for b in range(len(rows) // batch):  # global batch b = rank 0's part, then rank 1's, ...
            merged = [pair for r in range(world) for pair in shards[r][b * per:(b + 1) * per]]
            assert merged == one[b * batch:(b + 1) * batch]  # same images, same augmentation seeds


def test_global_batch_must_split_over_the_processes(prepared):
    root, out = prepared
    p, _ = params.parse("t", [str(a) for a in flags(root, out, "--batch-size", "8")])
    with pytest.raises(PipelineError, match="does not split over 3 processes"):
        setup(p, 0, Dist(rank=0, world=3))


@pytest.mark.parametrize("text, world, expect", [(None, 1, (0, 1)), ("1/4", 1, (1, 4)), (None, 2, (0, 2))])
def test_shard_of(text, world, expect):
    assert shard_of(text, Dist(0, world)) == expect


@pytest.mark.parametrize("text", ["4/4", "x", "1/0", "-1/2"])
def test_bad_shards_are_refused(text):
    with pytest.raises(PipelineError, match="--shard"):
        shard_of(text, Dist())


# --- validation over two processes is the one-process validation ---
EVALUATE = """
import sys
import numpy as np
import params
from lib.model import read_checkpoint
from lib.runtime import Dist
from lib.train import evaluate, setup
p, _ = params.parse("evaluate", sys.argv[2:])
dist = Dist.start(p.device)
run = setup(p, 0, dist, resume=True)
run.net.load_state_dict(read_checkpoint(sys.argv[1])["model"])
ev = evaluate(run)
if dist.main:
    np.savez(sys.argv[1] + f".world{dist.world}.npz", loss=ev.loss, dice=ev.dice, probs=ev.probs.array())
dist.close()
"""


def test_sharded_validation_gives_the_single_process_dice_and_maps(prepared, tmp_path):
    root, out = prepared
    run_script("02_train.py", "--fold", "0", *flags(root, out))
    best = files.fold_dir(out, "demo", 0) / files.BEST
    script = tmp_path / "evaluate.py"
    script.write_text(EVALUATE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(best), *map(str, flags(root, out))]
    subprocess.run([sys.executable, str(script), *args], check=True, env=env, cwd=ROOT, capture_output=True)
    subprocess.run([*TORCHRUN, str(script), *args], check=True, env=env, cwd=ROOT, capture_output=True)
    one, two = (np.load(f"{best}.world{w}.npz") for w in (1, 2))
    assert np.array_equal(one["probs"], two["probs"])  # every validation map, in val_ids order
    assert two["dice"] == pytest.approx(float(one["dice"]), abs=1e-12)
    assert np.array_equal(load_oof(best.parent / files.OOF).probs.array(), one["probs"])  # what training saved for its best epoch


# --- training under torchrun ---
def test_torchrun_trains_every_fold_with_rank_0_alone_writing_and_printing(prepared):
    root, out = prepared
    # the mild affine of the earlier default: 2 epochs of the zoom-out one leave the models too far from converged
    # for two runs with different BatchNorm batches to score alike; float32, as bf16 autocast (--amp auto on a CPU
    # with AMX or AVX512-BF16) adds its own rounding to the gap (0.08 on an AMD EPYC)
    mild = ["--scale-low", "0.92", "--scale-high", "1.08", "--translate", "0.04", "--border", "reflect", "--amp", "off"]
    run_script("02_train.py", "--fold", "all", *flags(root, out, "--experiment", "single", *mild))
    proc = torchrun("02_train.py", "--fold", "all", *flags(root, out, "--experiment", "ddp", *mild))
    split = pd.read_csv(out / "folds.csv", dtype={"id": str})
    for k in (0, 1):
        assert proc.stdout.count(f"fold {k} epoch 2/2:") == 1  # one epoch line, from rank 0
        fold = files.fold_dir(out, "ddp", k)
        assert sorted(p.name for p in fold.iterdir()) == sorted(
            [files.PARAMS, files.LOG, files.CURVE, files.BEST, files.LAST, files.OOF])  # the lock went with the run
        oof = load_oof(fold / files.OOF)
        assert oof.ids == sorted(split.id[split.fold == k]) and len(oof.probs) == len(oof.ids)  # the whole validation set
        assert pd.read_csv(fold / files.LOG).epoch.tolist() == [1, 2]
        assert read_checkpoint(fold / files.LAST)["world"] == 2
    # the same schedule; BatchNorm sees 4 images per rank instead of 8, so the scores are close, not equal. One fold's
    # 2-epoch Dice moves by up to 0.07 with that alone (0.420 against 0.354 for fold 1 once the threshold 0.5 kept
    # 128 / 255), so the mean of the two folds is compared
    dice = {e: np.mean([read_checkpoint(files.fold_dir(out, e, k) / files.BEST)["val_dice"] for k in (0, 1)])
            for e in ("single", "ddp")}
    assert abs(dice["single"] - dice["ddp"]) < 0.05, dice
    assert "x 2 processes" in proc.stdout and ", global batch 8" in proc.stdout


def _rank_pid(tag: str, local_rank: int) -> int | None:
    """pid of the torchrun worker whose command line holds ``tag`` and whose LOCAL_RANK is ``local_rank``."""
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if tag.encode() in cmd and b"torch.distributed.run" not in b" ".join(cmd) and \
                f"LOCAL_RANK={local_rank}".encode() in env:
            return int(entry.name)
    return None


def test_a_killed_rank_stops_the_other_and_the_run_resumes_under_torchrun(prepared):
    root, out = prepared
    args = ["--fold", "0", *flags(root, out, "--experiment", "killed", "--epochs", "3")]
    # rank 0 stops itself once epoch 1's last.pt is written; rank 1 then waits for it in the next collective
    marker = out / "rank0.pid"
    job = subprocess.Popen([*TORCHRUN, str(STOP_AT), str(ROOT / "02_train.py"), *map(str, args)], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=stop_env("lib.train:write_checkpoint", files.LAST, marker=marker))
    last = files.fold_dir(out, "killed", 0) / files.LAST
    while not marker.exists():
        assert job.poll() is None, f"torchrun ended before rank 0 wrote last.pt:\n{job.communicate()[1][-3000:]}"
        time.sleep(0.01)
    rank0 = int(marker.read_text())
    wait_stopped(rank0)
    victim = _rank_pid("killed", 1)
    assert victim is not None and job.poll() is None, "rank 1 finished before it could be killed"
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    os.kill(rank0, signal.SIGCONT)  # it finds rank 1 gone (or torchrun's SIGTERM waiting for it)
    stdout, stderr = job.communicate(timeout=120)
    assert time.time() - killed_at < 60  # the other rank stopped, no hang
    assert job.returncode != 0
    assert "rank 0 stopped: torchrun ended the job" in stderr or "another process of this torchrun job" in stderr
    assert stderr.count("Traceback (most recent call last)") <= 1, stderr  # torchrun's own report, none from rank 0
    epoch = read_checkpoint(last)["epoch"]  # the finished epoch's files are intact
    assert 1 <= epoch < 3
    again = torchrun("02_train.py", *args, "--resume")
    assert f"resumed after epoch {epoch}" in again.stdout
    assert pd.read_csv(last.parent / files.LOG).epoch.tolist() == [1, 2, 3]
    # and once more in one process: another world size continues the same schedule
    one = run_script("02_train.py", *map(str, args), "--resume", "--epochs", "3")
    assert "resumed after epoch 3" in one.stdout


def test_a_second_process_on_the_same_fold_is_refused_and_a_dead_ones_lock_is_not(prepared):
    root, out = prepared
    args = ["--fold", "0", *flags(root, out, "--experiment", "twice", "--epochs", "3")]
    # the first run stops itself (holding the fold's lock) once epoch 1's last.pt is written
    first = start_stopped("02_train.py", *args, at="lib.train:write_checkpoint", name=files.LAST)
    lock = files.fold_dir(out, "twice", 0) / files.LOCK
    assert lock.read_text().strip()
    second = run_script("02_train.py", *args, "--resume", check=False)
    first_alive = first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first_alive, "the first run ended before the second started"
    assert second.returncode == 1 and f"in use by another process (pid {first.pid} on host {socket.gethostname()}" \
        in second.stderr and "02_train.py --fold 0" in second.stderr  # then the command to run after it
    assert second.stderr.count("\n") == 1
    # the lock of a killed process does not block: --resume continues (or starts) the fold; killed between writing
    # epoch 1's model.pt and its first last.pt, the fold can only be trained again (--restart, as 02 advises)
    fold = files.fold_dir(out, "twice", 0)
    again = "--restart" if (fold / files.BEST).exists() and not (fold / files.LAST).exists() else "--resume"
    third = run_script("02_train.py", *args, again)
    assert "fold 0 epoch 3/3" in third.stdout


# --- test inference ---
def test_torchrun_and_separate_shards_write_the_single_process_maps(tiny_demo, tmp_path):
    root, out = tiny_demo, tmp_path / "out"
    args = flags(root, out, "--predict-batch-size", "4")  # 16 test images: 4 batches
    run_script("01_prepare.py", *args)
    run_script("02_train.py", "--fold", "all", *args, "--epochs", "1")
    run_script("03_predict.py", *args)
    probs = files.run_dir(out, "demo") / files.TEST_PROBS
    reference = tmp_path / "reference"
    shutil.move(probs, reference)
    digest = {p.name: p.read_bytes() for p in reference.iterdir()}

    torchrun("03_predict.py", *args)
    assert {p.name: p.read_bytes() for p in probs.iterdir()} == digest
    shutil.rmtree(probs)

    run_script("03_predict.py", *args, "--shard", "1/3")
    refused = run_script("04_submit.py", *args, check=False)
    assert refused.returncode == 1 and "test maps missing" in refused.stderr and "--shard" in refused.stderr
    assert not (files.run_dir(out, "demo") / "submission.csv.gz").exists()
    for k in (0, 2):
        shard = run_script("03_predict.py", *args, "--shard", f"{k}/3")
        assert f"shard {k}/3 done" in shard.stdout
    assert {p.name: p.read_bytes() for p in probs.iterdir()} == digest
    again = run_script("03_predict.py", *args, "--shard", "2/3")  # each shard resumes on its own
    assert "to predict" in again.stdout and ", 0 to predict" in again.stdout
    run_script("04_submit.py", *args)


def test_torchrun_trains_on_tiles_and_validates_every_image_by_sliding_window(tiny_demo, tmp_path):
    """02 --tile-size under torchrun: rank 0 builds the tile cache while rank 1 waits, the ranks share each global
    batch of tiles, validation is sharded and its maps gathered: oof.npz holds every validation image's map at the
    network's scale, with the tiling."""
    out = tmp_path / "out"
    tiled = ["--tile-size", "32", "--downscale", "4", "--epochs", "1", "--cache", "off"]
    run_script("01_prepare.py", *flags(tiny_demo, out, "--tile-size", "32", "--downscale", "4"))
    shutil.rmtree(out / "cache" / "tiles_4")  # built again by rank 0 under torchrun
    proc = torchrun("02_train.py", "--fold", "0", *flags(tiny_demo, out, *tiled))
    assert proc.stdout.count("fold 0: best val Dice") == 1  # rank 0 alone prints
    made = load_oof(files.fold_dir(out, "demo", 0) / files.OOF)
    assert len(made.ids) == 32 and made.tiling["tile_size"] == 32
    assert {m.shape for m in made.probs} == {(40, 60)}
