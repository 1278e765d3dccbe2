"""What training reads (lib/cache.py): the image cache where it fits, JPEG decoding in loader workers where it does
not, the same items either way; 01_prepare.py says what it will write and refuses a short disk before writing."""
import importlib.util
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch

import params
from conftest import ROOT, TINY_FLAGS, run_script
from lib import cache as cache_mod, files
from lib.data import SeededShuffle, TrainSet, make_loader, train_transform
from lib.errors import PipelineError
from lib.task import BINARY

H, W = 64, 96


def ids_of(root):
    return sorted(p.stem for p in (root / files.TRAIN).glob("*.jpg"))


def test_decoded_items_equal_cached_items_with_and_without_augmentation(tiny_demo, tmp_path):
    ids = ids_of(tiny_demo)
    cached = cache_mod.open_cache(tiny_demo, tmp_path, ids, H, W, workers=0, mode="on")
    decoded = cache_mod.open_cache(tiny_demo, tmp_path, ids, H, W, workers=0, mode="off")
    assert cached.cached and not decoded.cached
    assert np.array_equal(cached.truth, decoded.truth) and cached.orig_size == decoded.orig_size
    for row in (0, 5, len(ids) - 1):
        for a, b in zip(cached.item(row), decoded.item(row)):
            assert a.dtype == b.dtype == np.uint8 and np.array_equal(a, b)
    transform = train_transform(0.5, 0.5, 0.5)
    for item in [(3, 11), (7, 12345)]:  # (row, augmentation seed)
        for a, b in zip(TrainSet(cached, transform)[item], TrainSet(decoded, transform)[item]):
            assert torch.equal(a, b)


def test_loader_worker_processes_yield_the_in_process_batches(tiny_demo, tmp_path):
    """Decoding in DataLoader worker processes gives the batches, in the order, of decoding in the training process."""
    ids = ids_of(tiny_demo)
    data = cache_mod.open_cache(tiny_demo, tmp_path, ids, H, W, workers=0, mode="off")
    dataset = TrainSet(data, train_transform(0.5, 0.5, 0.5))
    sampler = SeededShuffle(np.arange(len(ids)), seed=4)
    in_process = list(make_loader(dataset, sampler, 8, 0, False, drop_last=True))
    in_workers = list(make_loader(dataset, sampler, 8, 2, False, drop_last=True))
    assert len(in_process) == len(in_workers) == len(ids) // 8
    for (xa, ya), (xb, yb) in zip(in_process, in_workers):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("mode, n, size, budget, expect", [
    ("auto", 5088, (128, 192), 2.0, True),  # 0.5 GB: cached
    ("auto", 5088, (1280, 1920), 2.0, False),  # 50 GB: decoded in workers
    ("auto", 512, (1280, 1920), 2.0, False),  # 5 GB
    ("auto", 512, (1280, 1920), 6.0, True),
    ("on", 5088, (1280, 1920), 0.0, True),
    ("off", 16, (32, 32), 100.0, False),
])
def test_auto_caches_images_only_within_the_budget(mode, n, size, budget, expect):
    assert cache_mod.use_image_cache(mode, n, *size, budget) is expect


def test_projected_sizes_are_the_arrays_written(tiny_demo, tmp_path):
    ids = ids_of(tiny_demo)
    cache_mod.open_cache(tiny_demo, tmp_path, ids, H, W, workers=0, mode="on")
    data_bytes = {p.name: p.stat().st_size for p in (tmp_path / "cache").rglob("*.npy")}
    header = 128  # np.save's header
    assert data_bytes["images.npy"] + data_bytes["masks.npy"] - 2 * header == cache_mod.projected_bytes(len(ids), H, W)
    orig = cache_mod.open_cache(tiny_demo, tmp_path, ids, H, W, workers=0, mode="off").orig_size
    assert data_bytes["truth.npy"] - header == cache_mod.truth_bytes(len(ids), orig, BINARY)


def load_prepare():
    spec = importlib.util.spec_from_file_location("prepare", ROOT / "01_prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_disk_is_refused_before_anything_is_written_and_the_advice_repairs_it(tiny_demo, tmp_path,
                                                                                        monkeypatch, capsys):
    prepare = load_prepare()
    out = tmp_path / "out"
    ids = ids_of(tiny_demo)
    flags = ["--input", str(tiny_demo), "--output", str(out), *map(str, TINY_FLAGS), "--cache", "on"]
    p, _ = params.parse("t", flags)
    truth = cache_mod.truth_bytes(len(ids), (160, 240), BINARY)
    usage = namedtuple("usage", "total used free")
    # room for the truth, not for the images
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: usage(10**12, 0, int(truth * 1.2)))
    with pytest.raises(PipelineError) as e:
        prepare.main(p)
    message = str(e.value)
    assert "free" in message and "--cache off" in message and "nothing was written" in message
    assert not out.exists() or not any(out.rglob("*"))  # no folds.csv, no cache
    p, _ = params.parse("t", flags + ["--cache", "off"])  # what the message advises
    prepare.main(p)
    assert "writes 0.00 GB" in capsys.readouterr().out
    assert (out / "folds.csv").exists() and (out / "cache" / "truth" / "meta.json").exists()
    assert not (out / "cache" / f"{H}x{W}").exists()


def test_short_disk_cli_is_one_line_and_nonzero(tiny_demo, tmp_path):
    """The command-line form: a network size whose image cache is twice the free space of this disk."""
    out = tmp_path / "out"
    need = cache_mod.projected_bytes(len(ids_of(tiny_demo)), H, W)
    free = shutil.disk_usage(tmp_path).free
    height = 32 * int(np.ceil(np.sqrt(free / need * 2) * H / 32))  # a size whose cache exceeds the free space
    width = height // 2 * 3 // 32 * 32
    proc = run_script("01_prepare.py", "--input", tiny_demo, "--output", out, *TINY_FLAGS, "--height", height,
                      "--width", width, "--cache", "on", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert line.count("\n") == 0 and "GB free" in line and "--cache off" in line
    assert not out.exists() or not any(out.rglob("*"))


def test_real_sample_at_the_default_size_writes_the_truth_only(carvana_sample, tmp_path):
    """Issue 10: 01_prepare.py with the default (full-resolution) settings on the real sample writes well under 1.5 GB
    (a raw cache would be 5 GB) and says what it writes."""
    proc = run_script("01_prepare.py", "--input", carvana_sample, "--output", tmp_path, "--workers", "2")
    written = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert written < 0.2e9, written  # 512 packed full-resolution masks: 157 MB
    assert "cache: writes 0.16 GB" in proc.stdout and "decodes each JPEG" in proc.stdout
    assert not list(tmp_path.rglob("images.npy"))
