"""Images/s of the torch predictor (03_predict.py --images) and the onnxruntime one (deploy.py) on this machine, for
the demo and the cpu preset networks, on the same photos in one run.

    nice -n 10 .venv/bin/python benchmarks/bench_export.py --output /tmp/bench_export [--photos 32] [--repeats 3]

For each preset it makes a small synthetic demo dataset, trains the preset's network for one epoch on every image
(02_train.py --fold full: speed does not depend on the weights), exports it (05_export.py, which checks parity on 4
images), then times on the same photos:
  1. the network alone on batches of --predict-batch-size preprocessed uint8 images (TTA hflip, what 03 uses without
     a tuning): torch fp32, torch with the preset's --amp (bf16 autocast on CPUs with AMX or AVX512-BF16), onnxruntime fp32;
  2. whole photo predictors, decoding to masks, overlays and masks.csv: lib.overlay.predict_photos (03 --images)
     and lib.deploy.predict_photos (deploy.py).
The best of --repeats timings is kept. With a CUDA GPU it adds torch on cuda and onnxruntime's CUDA provider
(when the installed onnxruntime has it).
"""
from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import params  # noqa: E402
from lib import deploy, files  # noqa: E402


def best_rate(fn, n: int, repeats: int) -> float:
    """Images/s of ``fn`` (which handles ``n`` images): the best of ``repeats`` timed calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return n / min(times)


def stage(script: str, *args) -> None:
    subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)


def bench_preset(preset: str, base: Path, n_photos: int, repeats: int) -> list[tuple[str, float]]:
    from demo import cars
    from lib.cache import decode_net_image
    from lib.photos import read_image_bytes
    from lib.overlay import predict_photos as torch_photos
    from lib.predict import load_fold_models, predict_batch
    from lib.runtime import Precision
    root, out = base / "input", base / preset
    if not root.exists():
        cars.generate(root, n_train_cars=4, n_test_cars=max(1, n_photos // 16), width=480, height=320, seed=1,
                      workers=1)
    flags = ["--preset", preset, "--input", root, "--output", out, "--epochs", "1", "--workers", "0", "--jobs", "1"]
    stage("01_prepare.py", *flags)
    stage("02_train.py", "--fold", "full", *flags)
    stage("05_export.py", *flags, "--check", "4")
    p, _ = params.parse("", [str(a) for a in flags])
    photos = sorted((root / files.TEST).iterdir())[:n_photos]
    ens = load_fold_models(p)
    model = deploy.load(files.run_dir(out, p.experiment) / "export" / deploy.ONNX_NAME)
    h, w = ens.size
    images = np.stack([decode_net_image(read_image_bytes(x), x, h, w)[0] for x in photos]).transpose(0, 3, 1, 2)
    images = np.ascontiguousarray(images)
    batches = [images[i:i + p.predict_batch_size] for i in range(0, len(images), p.predict_batch_size)]
    mode = model.record["tta"]
    rows = []
    auto = Precision.for_device(torch.device("cpu"), p.amp)

    def torch_net(precision):
        def run():
            ens.precision = precision
            for b in batches:
                predict_batch(ens, torch.from_numpy(b), mode)
        return run
    fp32 = Precision.for_device(torch.device("cpu"), "off")
    on = ens.device.type  # --device auto: the GPU where there is one
    rows.append((f"network, torch {on} fp32", best_rate(torch_net(fp32), len(images), repeats)))
    if auto.enabled:
        rows.append((f"network, torch {on} --amp {p.amp} ({str(auto.dtype).split('.')[-1]})",
                     best_rate(torch_net(auto), len(images), repeats)))
    rows.append(("network, onnxruntime CPU fp32", best_rate(lambda: [model.maps(b) for b in batches], len(images),
                                                            repeats)))
    ens.precision = auto
    rows.append(("photos, 03 --images (torch, --amp as preset)",
                 best_rate(lambda: torch_photos(p, [str(x) for x in photos], base / "masks_torch", overwrite=True),
                           len(photos), repeats)))
    rows.append(("photos, deploy.py (onnxruntime)",
                 best_rate(lambda: deploy.predict_photos(model, photos, base / "masks_onnx", p.predict_batch_size),
                           len(photos), repeats)))
    if torch.cuda.is_available():
        import onnxruntime as ort
        ens_gpu = load_fold_models(params.parse("", [str(a) for a in flags] + ["--device", "cuda"])[0])
        gpu = [torch.from_numpy(b) for b in batches]
        rows.append(("network, torch cuda (--amp as preset)",
                     best_rate(lambda: ([predict_batch(ens_gpu, b, mode) for b in gpu], torch.cuda.synchronize()),
                               len(images), repeats)))
        if "CUDAExecutionProvider" in ort.get_available_providers():
            cuda = deploy.load(model.path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
            rows.append(("network, onnxruntime CUDA fp32",
                         best_rate(lambda: [cuda.maps(b) for b in batches], len(images), repeats)))
    return [(f"{preset} ({h}x{w}, TTA {mode})", 0.0)] + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="scratch folder (deleted first)")
    parser.add_argument("--photos", type=int, default=32, help="photos timed per preset")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the best is kept)")
    parser.add_argument("--presets", default="demo,cpu")
    args = parser.parse_args()
    shutil.rmtree(args.output, ignore_errors=True)
    args.output.mkdir(parents=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}; "
          f"onnxruntime {__import__('onnxruntime').__version__}")
    for preset in args.presets.split(","):
        for name, rate in bench_preset(preset, args.output, args.photos, args.repeats):
            print(f"| {name} | {rate:.1f} |" if rate else f"\n{name}\n| predictor | images/s |\n|---|---:|")


if __name__ == "__main__":
    main()
