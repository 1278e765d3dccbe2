"""Where and how a stage runs: the device, mixed precision, and the processes of a torchrun job.

One process (``python 02_train.py``) is rank 0 of a world of 1. Under ``torchrun --nproc_per_node N`` each process
is one rank: ``Dist.start`` joins the process group (NCCL on GPUs, gloo on CPUs) from torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; several machines by torchrun's own --nnodes/--rdzv flags), and
each rank takes GPU LOCAL_RANK. A rank that fails makes torchrun stop the others; their collectives then fail or
they get SIGTERM, and either way they exit with one line (``stopped``) instead of waiting forever.
"""
from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass, field

import torch

from lib.errors import PipelineError
from params import SETTINGS

JOINED = False  # set once this process joins a torchrun job (lib.errors reads it to explain failed collectives)
COLLECTIVE_TIMEOUT_S = 600  # a collective that waits longer than this for a lost peer raises instead of hanging


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda (GPU ``local_rank``) if present else cpu; an explicit cuda without a GPU is an error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            from params import rerun
            raise PipelineError(f"--device {name} asked for, but no CUDA GPU is visible; use the CPU: "
                                f"{rerun('--device', 'cpu')}")
        index = torch.device(name).index
        index = local_rank if index is None else index
        if index >= torch.cuda.device_count():
            raise PipelineError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device(f"cuda:{index}")
    if name != "cpu":
        raise PipelineError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return torch.device(name)


@dataclass
class Precision:
    """Autocast settings. ``--amp auto``: bf16 on GPUs that support it, else fp16 with a gradient scaler; on a CPU
    bf16 where it has bf16 hardware (AMX or AVX512-BF16), else off. ``bf16``/``fp16`` force that type on any device (a CPU too: how CI runs the GPU code paths); ``off`` is fp32."""
    enabled: bool
    dtype: torch.dtype
    scaler: torch.amp.GradScaler = field(repr=False)

    @classmethod
    def for_device(cls, device: torch.device, amp: str) -> "Precision":
        if amp not in (modes := SETTINGS["amp"].choices):
            raise PipelineError(f"--amp {amp!r}: use one of {', '.join(modes)}")
        if amp == "auto":
            if device.type == "cuda":
                amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                amp = "bf16" if cpu_has_bf16() else "off"
        dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        return cls(amp != "off", dtype, torch.amp.GradScaler(device.type, enabled=amp == "fp16"))

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)

    @property
    def name(self) -> str:
        return str(self.dtype).split(".")[-1] if self.enabled else "float32"


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: Intel AMX (Sapphire Rapids and later) or AVX512-BF16 (AMD Zen 4
    and later, Intel Cooper Lake). There bf16 autocast trains the CPU presets 1.7-2.6x faster than float32 (AMX:
    benchmarks/results/recipes.md; AVX512-BF16 on an AMD EPYC: 2.0x at 160 x 224, 2.55x at 320 x 448, recipes.md's
    F38 with its command); elsewhere (and on ARM CPUs, which torch offers no probe for) it is float32."""
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(probe and probe()) for probe in probes)


def set_threads(threads: int) -> None:
    """--threads N: torch's CPU threads (0 keeps torch's default, one per core). Give it when processes share the
    cores (shards side by side): more threads than cores make OpenMP's threads spin while they wait."""
    if threads:
        torch.set_num_threads(threads)


def loader_workers(workers: int, device: torch.device, cached: bool) -> int:
    """Loader processes: ``workers`` on GPU, or where items are decoded from JPEG; none on CPU reading the image
    cache, where the model needs every core and reading the memmap in the training process costs less than a
    worker competing with it (loader and step rates: benchmarks/bench_loader.py)."""
    return workers if device.type == "cuda" or not cached else 0


def use_compile(setting: str, device: torch.device) -> bool:
    """--compile on / off, or auto: on GPU only (there it pays for its minute or two of compiling within an epoch
    of the full data: benchmarks/results/gpu.md; on a CPU it costs minutes for little gain)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


# --- processes ---
@dataclass
class Dist:
    """This process's place in the job: rank ``rank`` of ``world`` (1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes files and prints progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def start(cls, device_setting: str) -> "Dist":
        """Join torchrun's process group when started by torchrun (WORLD_SIZE > 1), else a world of one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not torch.distributed.is_available():
            raise PipelineError("torchrun started several processes, but this torch has no torch.distributed")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(device_setting, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
                device_id=device if device.type == "cuda" else None)
        global JOINED
        JOINED = True
        _stop_on_sigterm(rank)
        return cls(rank, world, local_rank)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def sum(self, *values: float) -> list[float]:
        """Element-wise sums of ``values`` over the ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.active:
            if torch.distributed.get_backend() == "nccl":
                t = t.cuda()
            torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def gather(self, obj) -> list | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None on the others)."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Stopped(PipelineError):
    """This rank was told to stop (SIGTERM, e.g. by torchrun after another rank failed)."""


def _stop_on_sigterm(rank: int) -> None:
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the exit that follows is not interrupted again
        raise Stopped(f"rank {rank} stopped: torchrun ended the job because another process of it failed (torchrun's "
                      "report names it). Finished files are kept; continue with the same command (02: add --resume)")
    signal.signal(signal.SIGTERM, handler)


def shard_of(text: str | None, dist: Dist) -> tuple[int, int]:
    """(K, N) of ``--shard K/N``, else this rank's place under torchrun (rank/world), else (0, 1)."""
    if text is None:
        return dist.rank, dist.world
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise PipelineError(f"--shard {text!r}: give K/N, e.g. 0/4 (shard K of N, K from 0)") from None
    if not 0 <= k < n:
        raise PipelineError(f"--shard {text}: K must be in 0..N-1")
    if dist.active:
        raise PipelineError("--shard is for separate jobs; under torchrun every rank takes its shard by itself")
    return k, n
