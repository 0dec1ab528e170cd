"""BatchShapingLoss speed on CPU: this checkout against an earlier implementation from git, side by side.

Loads ``batchshaping/losses.py`` as of ``--old-rev`` (default: the last commit of the implementation with
the bit-indexed CDF table and the numpy packed-key sort) from git into a temporary module, and times
forward + backward of ``BatchShapingLoss`` (Beta(0.6, 0.4), "sum") of both on the same (N, G) float32
probabilities, interleaved call by call so that both see the same machine load, for each ``--threads``
value. Also times the pieces of the current implementation on the column blocks the loss works in on CPU
(its CPU sort of packed keys with numpy, torch.sort as other devices use it, the CDF + density) and records
the accuracy of both float32 paths against the exact float64 path. Reports medians of wall time and of the
process's CPU time (all its threads). Writes benchmarks/results/losses.json.

    python -m benchmarks.bench_losses --threads 1 --repeats 40
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from batchshaping import losses as new
from benchmarks.common import machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
#: Last commit of losses.py with the float32-bit-indexed table and the numpy sort of packed keys.
OLD_REV = "719d14a5fbabaa956f745f87c9050f1416e7a81f"


def load_old(rev: str) -> ModuleType:
    """batchshaping/losses.py as of git revision ``rev``, imported as a module of its own."""
    src = subprocess.run(
        ["git", "show", f"{rev}:batchshaping/losses.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "losses_old.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("losses_old", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["losses_old"] = module  # dataclasses and the like look their module up here
        spec.loader.exec_module(module)
    return module


def measure(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict:
    """Median wall and process CPU time (ms) of each function, called in turn, round by round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            wall[name].append((w1 - w0) * 1e3)
            cpu[name].append((c1 - c0) * 1e3)
    out = {}
    for name in fns:
        w = sorted(wall[name])
        out[name] = {
            "median_ms": statistics.median(w),
            "p25_ms": w[len(w) // 4],
            "p75_ms": w[(3 * len(w)) // 4],
            "cpu_median_ms": statistics.median(cpu[name]),
            "runs": len(w),
        }
    return out


def fwd_bwd(loss: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        loss(x).backward()

    return run


def accuracy(loss: torch.nn.Module, x: torch.Tensor, exact: torch.nn.Module) -> dict[str, float]:
    """Loss and gradient of ``loss`` on float32 x against ``exact`` on the same values in float64."""
    x32, x64 = x.clone().requires_grad_(), x.double().requires_grad_()
    out32, out64 = loss(x32), exact(x64)
    out32.backward()
    out64.backward()
    return {
        "loss_rel_diff": abs(out32.item() - out64.item()) / out64.item(),
        "grad_max_abs_diff": (x32.grad.double() - x64.grad).abs().max().item(),
        "grad_max_abs": x64.grad.abs().max().item(),
    }


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in set(flags) if f.startswith(("amx", "avx512f", "avx512_bf16")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="batch size N")
    ap.add_argument("--g", type=int, default=2048, help="number of gates G")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts to run with")
    ap.add_argument("--repeats", type=int, default=40, help="timed calls of each function per thread count")
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision of the implementation to compare with")
    ap.add_argument("--out", type=Path, default=RESULTS / "losses.json")
    args = ap.parse_args()
    n, g = args.n, args.g
    old = load_old(args.old_rev)

    torch.manual_seed(0)
    x = torch.rand(n, g)
    loss_new, loss_old = new.BatchShapingLoss(0.6, 0.4), old.BatchShapingLoss(0.6, 0.4)
    x_new, x_old = x.clone().requires_grad_(), x.clone().requires_grad_()
    prior = loss_new.prior
    # The pieces as the loss runs them on CPU: column blocks of ~32K values.
    block = max(1, 32768 // n)
    xt = x.t().contiguous()
    blocks = [xt[j : j + block] for j in range(0, g, block)]
    sorted_blocks = [torch.sort(b, dim=1, stable=True).values for b in blocks]

    acc = {
        "new_float32_vs_float64": accuracy(loss_new, x, loss_new),
        "old_float32_vs_float64": accuracy(loss_old, x, loss_new),
    }
    runs = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        fns = {
            "old: fwd+bwd": fwd_bwd(loss_old, x_old),
            "new: fwd+bwd": fwd_bwd(loss_new, x_new),
            "new: numpy key sort of the blocks (CPU)": lambda: [new._sort_rows(b) for b in blocks],
            "torch.sort of the blocks (other devices)": lambda: [
                torch.sort(b, dim=1, stable=True) for b in blocks
            ],
            "new: CDF + density of the blocks (table)": lambda: [
                prior._cdf_pdf_f32(v, new.DEFAULT_PDF_CLIP) for v in sorted_blocks
            ],
        }
        res = measure(fns, args.repeats)
        ratio = {
            "wall": res["new: fwd+bwd"]["median_ms"] / res["old: fwd+bwd"]["median_ms"],
            "cpu": res["new: fwd+bwd"]["cpu_median_ms"] / res["old: fwd+bwd"]["cpu_median_ms"],
        }
        load = os.getloadavg()
        runs[str(threads)] = {"results": res, "new_over_old": ratio, "load_average": load}
        print(f"BatchShapingLoss ({n}, {g}) float32, CPU, {threads} torch thread(s), load {load[0]:.1f}")
        print(f"  {'':40s} {'median':>8s} {'p25':>8s} {'p75':>8s} {'cpu med':>8s}  (ms)")
        for name, r in res.items():
            cols = (r["median_ms"], r["p25_ms"], r["p75_ms"], r["cpu_median_ms"])
            print(f"  {name:40s} " + " ".join(f"{c:8.2f}" for c in cols))
        print(f"  new / old fwd+bwd: {ratio['wall']:.2f}x wall, {ratio['cpu']:.2f}x cpu")
    for name, a in acc.items():
        print(f"{name}: " + ", ".join(f"{k} {val:.3g}" for k, val in a.items()))

    record = {
        "benchmark": "BatchShapingLoss forward+backward, current vs earlier implementation (CPU)",
        "command": f"python -m benchmarks.bench_losses --n {n} --g {g} --threads "
        + " ".join(map(str, args.threads))
        + f" --repeats {args.repeats} --old-rev {args.old_rev}",
        "old_rev": args.old_rev,
        "shape": [n, g],
        "dtype": "float32",
        "prior": [0.6, 0.4],
        "reduction": "sum",
        "runs_by_threads": runs,
        "accuracy": acc,
        "machine": {
            **machine(),
            "cpu_flags": cpu_flags(),
            "note": "shared machine: other jobs ran at the same time (see load_average per run)",
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
