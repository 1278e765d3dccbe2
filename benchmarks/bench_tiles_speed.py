"""Sliding-window prediction speed (issue 27): megapixels/s of ``tiles.sliding_window`` with the project's tile
predictor on one large synthetic image, per precision, beside the network alone on the same tiles.

    .venv/bin/python benchmarks/bench_tiles_speed.py                                   # CPU: a 1600 x 2400 image
    python3 benchmarks/bench_tiles_speed.py --height 7000 --width 10000 --amp off,bf16  # GPU: a 70 MP image

For each --amp it prints the whole sliding window (tiles cut from the image, predicted --batch at a time, blended
with Gaussian weights and stitched: what 03 --tile-size runs per image) and, as the reference in the same run, the
network alone on the same number of tiles already on the device (no cutting, no copy back, no blending): the gap is
what the stitching costs. Random weights (--encoder-weights none): speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib import tiles  # noqa: E402
from lib.model import build_model  # noqa: E402
from lib.predict import Ensemble, tile_predictor  # noqa: E402
from lib.runtime import Precision  # noqa: E402
from lib.task import Task  # noqa: E402
from params import make_params  # noqa: E402


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--height", type=int, default=1600)
    ap.add_argument("--width", type=int, default=2400)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--amp", default="off,auto", help="comma-separated --amp values to time (off = fp32)")
    ap.add_argument("--tta", default="none")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    p = make_params(encoder=args.encoder, encoder_weights="none", height=args.tile, width=args.tile)
    model = build_model(p).eval().to(device)
    image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    n_tiles = len(tiles.windows(args.height, args.width, args.tile, args.overlap))
    mp = args.height * args.width / 1e6
    print(f"machine: {machine()}; torch {torch.__version__}; {args.encoder} UNet, image {args.height} x {args.width} "
          f"({mp:.1f} MP), tiles of {args.tile} overlapping {args.overlap}: {n_tiles} tiles, batches of {args.batch}, "
          f"TTA {args.tta}")
    rows = []
    for amp in args.amp.split(","):
        precision = Precision.for_device(device, amp)
        ens = Ensemble([model], [0], [{}], p, device, precision, Task.of(p), channels_last=device.type == "cuda")
        predict = tile_predictor(ens, args.tta)
        with torch.inference_mode():
            tiles.sliding_window(predict, image[:args.tile * 2, :args.tile * 2], args.tile, args.overlap,
                                 args.batch)  # warm-up: kernels chosen, memory allocated
            sync(device)
            start = time.perf_counter()
            out = tiles.sliding_window(predict, image, args.tile, args.overlap, args.batch)
            sync(device)
            whole = time.perf_counter() - start
            # (N, H, W, 3) viewed as (N, 3, H, W), as the tile predictor hands tiles over (channels-last in memory)
            x = torch.randint(0, 256, (args.batch, args.tile, args.tile, 3), dtype=torch.uint8,
                              device=device).permute(0, 3, 1, 2)
            sizes = [args.batch] * (n_tiles // args.batch) + ([n_tiles % args.batch] if n_tiles % args.batch else [])
            with precision.autocast(device):
                for size in sorted(set(sizes)):  # warm-up of each batch shape
                    model(x[:size])  # uint8 in: the model normalises, as in 03
            sync(device)
            start = time.perf_counter()
            with precision.autocast(device):
                for size in sizes:  # the same tiles in the same batches, already on the device
                    model(x[:size])  # uint8 in: the model normalises, as in 03
            sync(device)
            net = time.perf_counter() - start
        assert out.shape[1:] == (args.height, args.width)
        name = "fp32" if not precision.enabled else str(precision.dtype).replace("torch.", "")
        rows.append({"amp": amp, "precision": name, "seconds": whole, "mp_per_s": mp / whole,
                     "tiles_per_s": n_tiles / whole, "network_seconds": net, "network_mp_per_s": mp / net,
                     "stitching_share": max(0.0, 1 - net / whole)})
        print(f"--amp {amp} ({name}): sliding window {whole:.2f} s = {mp / whole:.2f} MP/s ({n_tiles / whole:.1f} "
              f"tiles/s); network alone on the same tiles {net:.2f} s = {mp / net:.2f} MP/s; cutting, copying and "
              f"blending {max(0.0, 1 - net / whole):.0%} of the time", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
