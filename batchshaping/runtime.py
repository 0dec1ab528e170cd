"""Where a run executes: device, precision, threads, seeds and the torchrun process group.

Everything here is decided once, before the model is built; the training loop and the evaluation pass only
read the results (``device``, the autocast dtype, :class:`DistInfo`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

#: Where the CPU's feature flags are read (Linux); tests point it at a file of their own.
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first /proc/cpuinfo line named ``name`` ("flags", "model name"); None where none."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(name)), None)


def cpu_flags() -> set[str]:
    """The CPU's feature flags; empty where /proc/cpuinfo gives none."""
    return set((_cpuinfo_field("flags") or "").split())


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls are only fast with AVX512-BF16 or AMX; on AVX2-only CPUs they are several x slower."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = plain fp32)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if precision == "fp16" and device.type != "cuda":
        from batchshaping.config import ConfigError

        raise ConfigError("precision 'fp16' needs CUDA; use --set precision=bf16 or fp32 (or auto) on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """How results name an autocast dtype from :func:`resolve_precision`: "bfloat16", "float16" or "fp32"."""
    return str(dtype).replace("torch.", "") if dtype else "fp32"


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout a run's model and batches use: channels_last (NHWC, faster convolutions on CPU) or NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format


def machine_description(device: torch.device) -> str:
    """E.g. "AMD EPYC (AVX512-BF16 only), 2 cores, 2 threads" or the CUDA device name, for results."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = _cpuinfo_field("model name") or platform.processor() or platform.machine()
    flags = cpu_flags()  # which bf16 units: the same precision runs at different speeds on each
    bf16 = (
        "AVX512-BF16/AMX"
        if "amx_bf16" in flags
        else "AVX512-BF16 only"
        if "avx512_bf16" in flags
        else "no fast bf16"
    )
    n = torch.get_num_threads()
    return f"{cpu} ({bf16}), {os.cpu_count()} cores, {n} thread{'' if n == 1 else 's'}"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from batchshaping.config import ConfigError

        raise ConfigError(
            f"device {name!r} requested but this torch sees no CUDA device ({torch.__version__}); "
            "use --set device=cpu (or auto)"
        )
    return torch.device(name)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend)
    return info


def shutdown_distributed() -> None:
    """Leave the process group, if any, together with the other ranks: a rank that tears its backend down
    while a peer is still in a collective can abort that peer at exit ("terminate called without an active
    exception" with gloo), which torchrun reports as a failed run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def autocast(
    device: torch.device, dtype: torch.dtype | None, cache: bool = True
) -> contextlib.AbstractContextManager:
    """torch.autocast for ``dtype`` on ``device``, or a no-op for plain fp32 (``dtype`` None). ``cache=False``
    recasts the weights at every use (a captured CUDA graph must not keep casts made during its capture)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)
