"""What the benchmark scripts share: test images, untrained-gate calibration, a timer, the machine record.

Every script runs as a module from the repository root, e.g. ``python -m benchmarks.latency``: the root is
then on sys.path, so ``batchshaping`` and this module import without installing or editing sys.path.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchshaping.gates import force_gates, gate_modules, gate_outputs
from batchshaping.macs import MacCounter
from batchshaping.models.cifar_resnet import CifarResNet
from batchshaping.runtime import machine_description

ROOT = Path(__file__).resolve().parent.parent
#: Default cifar10_test.npz: .devdata/ (git-ignored) if it holds one, else ../shared/data/cifar10.
CIFAR_TEST = ROOT / ".devdata" / "cifar10_test.npz"
if not CIFAR_TEST.is_file():
    CIFAR_TEST = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_test.npz"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def load_images(path: Path, n: int, size: int, seed: int = 0) -> Tensor:
    """n random CIFAR-10 test images, normalised, (n, 3, size, size) float32 (bilinear resize if != 32)."""
    with np.load(path) as f:
        data = f["x_test"]
    idx = np.random.default_rng(seed).choice(len(data), n, replace=False)
    x = torch.from_numpy(data[np.sort(idx)]).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous()


def set_gates(model: nn.Module, mu: float, weight_std: float = 0.5, seed: int = 0) -> None:
    """fc2 of every gate: weight ~ N(0, weight_std), bias ~ mu + N(0, 1) (same draws for every mu)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, gate in gate_modules(model):
            gate.fc2.weight.normal_(0, weight_std, generator=gen)
            gate.fc2.bias.copy_(mu + torch.randn(gate.num_gates, generator=gen))


@torch.no_grad()
def mac_ratio(model: nn.Module, x: Tensor, counter: MacCounter, chunk: int = 16) -> Tensor:
    """Per-image MAC ratio (N,) of the eval-mode gated model: conditional MACs (gates included) / dense."""
    out = []
    for xb in x.split(chunk):
        model(xb)
        out.append(counter.conditional(gate_outputs(model)).expand(len(xb)) / counter.dense)
    return torch.cat(out)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, chunk: int = 32) -> None:
    """Running statistics of every BatchNorm from x with all gates open (cumulative average), as training
    would leave them. The default statistics (mean 0, var 1) let an untrained ResNet-110's activations grow
    to ~1e5, where fp32 rounding alone exceeds the 1e-4 check and the gates would see unrealistic inputs.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    force_gates(model, 1.0)
    model.train()
    for xb in x.split(chunk):
        model(xb)
    model.eval()
    force_gates(model, None)


def calibrate(model: nn.Module, x: Tensor, target: float, steps: int, weight_std: float = 0.5) -> float:
    """Bisect the gate bias offset mu so that the mean MAC ratio on x is ~target; returns mu."""
    counter = MacCounter(model, x.shape[1:])
    lo, hi = -6.0, 6.0
    for _ in range(steps):
        mu = (lo + hi) / 2
        set_gates(model, mu, weight_std)
        if mac_ratio(model, x, counter).mean() > target:
            hi = mu
        else:
            lo = mu
    set_gates(model, (lo + hi) / 2, weight_std)
    return (lo + hi) / 2


def calibrate_untrained(model: nn.Module, data: Path, target: float = 0.5, weight_std: float = 0.5) -> float:
    """Set up an untrained gated model for timing, in place; returns the gate bias offset mu.

    BatchNorm statistics from real images (:func:`recalibrate_bn`), then the gates bisected to a MAC ratio of
    ~target (:func:`calibrate`) on other images than the timed ones: 64 at 32x32 for CIFAR models, 8 at
    112x112 for ImageNet models (4x cheaper than 224x224, the same gate statistics up to resolution).
    Gate fc2 weights N(0, weight_std) make the gates depend on the image, as trained gates do.
    """
    cifar = isinstance(model, CifarResNet)
    calib = load_images(data, 64 if cifar else 16, 32 if cifar else 112, seed=1)
    recalibrate_bn(model, calib)
    return calibrate(model, calib[: 64 if cifar else 8], target, 14 if cifar else 10, weight_std)


def dense_twin(gated: nn.Module) -> nn.Module:
    """A copy of the gated model with its gates forced open: compiled, it is the BN-folded dense model."""
    twin = copy.deepcopy(gated)
    force_gates(twin, 1.0)
    return twin


@torch.inference_mode()
def time_variants(
    fns: dict[str, Callable[[Tensor], Tensor]], x: Tensor, warmup: Tensor, repeats: int, budget_s: float
) -> tuple[dict[str, dict[str, float]], int, int]:
    """Batch-1 latency (ms) of each variant on the images x (N, 3, H, W), interleaved in a rotating order.

    Returns ({variant: {"wall", "cpu", "first"}}, images, repeats): wall-clock and thread-CPU time, each the
    mean over images of the per-image median over the runs after the image's first one, and "first": the
    mean wall time of the first runs (new gate patterns, hence new conv shapes: oneDNN kernel generation
    included, as for a stream of new images). Thread CPU time leaves out the time the process spends
    preempted by other processes, so it is the robust measure on a shared machine; it is the latency only
    with 1 thread (with more it is the main thread's share) and is used only then.

    Images run one after the other, each ``repeats + 1`` times with the variants interleaved. Once
    ``budget_s`` is spent it stops (after at least a first run and one repeat of one image): on a busy
    2-core machine two OpenMP threads can be 50x slower than one. Returns the images and the smallest
    number of repeats actually used.
    """
    names = list(fns)
    wall = {k: [[] for _ in range(len(x))] for k in names}
    cpu = {k: [[] for _ in range(len(x))] for k in names}
    for k in names:  # warm-up on other images (allocator, oneDNN kernels)
        for i in range(len(warmup)):
            fns[k](warmup[i : i + 1])
    t_end = time.perf_counter() + budget_s
    for i in range(len(x)):
        if i > 0 and time.perf_counter() > t_end:
            break
        xi = x[i : i + 1]
        for rep in range(repeats + 1):
            if rep >= 2 and time.perf_counter() > t_end:
                break
            for j in range(len(names)):
                k = names[(i + rep + j) % len(names)]  # rotate the order: no variant always runs first
                c0, t0 = time.thread_time(), time.perf_counter()
                fns[k](xi)
                wall[k][i].append(time.perf_counter() - t0)
                cpu[k][i].append(time.thread_time() - c0)
    use = [i for i in range(len(x)) if wall[names[0]][i]]
    lat = {
        k: {
            "wall": 1e3 * statistics.fmean(statistics.median(wall[k][i][1:]) for i in use),
            "cpu": 1e3 * statistics.fmean(statistics.median(cpu[k][i][1:]) for i in use),
            "first": 1e3 * statistics.fmean(wall[k][i][0] for i in use),
        }
        for k in names
    }
    return lat, len(use), min(len(wall[names[0]][i]) - 1 for i in use)


def machine() -> dict[str, str]:
    """The machine and software a result was measured with, for the JSON files: the CPU as
    :func:`batchshaping.runtime.machine_description` names it (the one description), torch's CPU capability,
    torch and Python versions."""
    return {
        "cpu": machine_description(torch.device("cpu")),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
