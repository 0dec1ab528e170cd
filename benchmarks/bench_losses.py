"""BatchShapingLoss speed on CPU (not a test). Writes benchmarks/results/losses.json.

Forward + backward of BatchShapingLoss ("sum" over gates, Beta(0.6, 0.4)) on (N, G) float32 probabilities
against two references, side by side in one process, interleaved round by round, with a fixed number of
torch threads:

* reference: the "authors' reference" style of the task: torch.sort along dim 0, Beta CDF with
  scipy.special.betainc on the host each call (numpy round trip), autograd through the sorted values with
  the analytic density (closed form in numpy, clipped like ours);
* authors' code path: what the authors' published code does per call: sort a contiguous (G, N) copy along
  its last dim, scipy.stats.beta.cdf and .pdf on the host, density clipped to [1e-3, 100], "mean" over gates.

Also times the pieces of ours (ranks, CDF, CDF + density) and of the reference, and some sort baselines.
Reports the median wall time of --repeats runs and, since the machine may be shared, the median CPU time
of the calling thread (robust to being descheduled; with --threads 1 all the work runs on that thread).

    python benchmarks/bench_losses.py --threads 1 --repeats 60 --ref-repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy import special, stats

from batchshaping import losses as L

RESULTS = Path(__file__).resolve().parent / "results"


class _RefBetaCDF(torch.autograd.Function):
    """Beta CDF of a tensor via scipy on the host; backward multiplies by the analytic (clipped) pdf."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, a: float, b: float, authors: bool) -> torch.Tensor:  # type: ignore[override]
        sn = s.detach().cpu().numpy()
        if authors:  # as in the authors' code: scipy.stats, density clipped to [1e-3, 100]
            pdf = np.clip(stats.beta.pdf(sn, a, b), 1e-3, 100)
            cdf = stats.beta.cdf(sn, a, b)
        else:
            s64 = sn.astype(np.float64)
            cdf = special.betainc(a, b, s64)
            with np.errstate(divide="ignore"):
                pdf = np.exp((a - 1) * np.log(s64) + (b - 1) * np.log1p(-s64) - L._log_beta(a, b))
            pdf = np.minimum(pdf, L.DEFAULT_PDF_CLIP)
        ctx.save_for_backward(torch.tensor(pdf, dtype=s.dtype, device=s.device))
        return torch.tensor(cdf, dtype=s.dtype, device=s.device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (pdf,) = ctx.saved_tensors
        return grad * pdf, None, None, None


def reference_loss(x: torch.Tensor, a: float = 0.6, b: float = 0.4) -> torch.Tensor:
    """Task's reference style: sort along dim 0, scipy betainc on the host, "sum" over gates."""
    n = x.shape[0]
    s, _ = torch.sort(x, dim=0)  # autograd scatters the gradient back through the sort
    cdf = _RefBetaCDF.apply(s, a, b, False)
    q = torch.arange(1, n + 1, dtype=x.dtype, device=x.device).unsqueeze(1) / (n + 1)
    return ((cdf - q) ** 2).mean(0).sum()


def authors_loss(x: torch.Tensor, a: float = 0.6, b: float = 0.4) -> torch.Tensor:
    """The authors' code path: (G, N) copy sorted along dim -1, scipy.stats cdf/pdf, "mean" over gates."""
    xt = x.transpose(0, 1).reshape(x.shape[1], -1)
    s, _ = torch.sort(xt, dim=-1)
    cdf = _RefBetaCDF.apply(s, a, b, True)
    n = s.shape[1]
    ecdf = torch.arange(1, n + 1, device=x.device, dtype=torch.float) / (n + 1)
    return torch.mean(torch.sum((ecdf[None, :] - cdf) ** 2, dim=-1) / n)


def measure(fns: dict[str, Callable[[], object]], repeats: dict[str, int], warmup: int = 2) -> dict:
    """Interleave the functions (one call of each per round) so they see the same machine load."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r >= repeats[name]:
                continue
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            w1, c1 = time.perf_counter(), time.thread_time()
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


def tied(x: torch.Tensor) -> torch.Tensor:
    """Mask of the elements of x (N, G) that equal another element of their column."""
    s, idx = torch.sort(x, dim=0, stable=True)
    eq = s[1:] == s[:-1]
    mask = torch.zeros(x.shape, dtype=torch.bool)
    mask.scatter_(0, idx[1:], eq)
    mask.scatter_(0, idx[:-1], eq | mask.gather(0, idx[:-1]))
    return mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="batch size N")
    ap.add_argument("--g", type=int, default=2048, help="number of gates G")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=60, help="runs of each fast function")
    ap.add_argument("--ref-repeats", type=int, default=15, help="runs of each reference function")
    ap.add_argument("--out", type=Path, default=RESULTS / "losses.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, g = args.n, args.g
    a, b = 0.6, 0.4

    x = torch.rand(n, g)
    x_ours, x_ref, x_auth = (x.clone().requires_grad_() for _ in range(3))
    loss = L.BatchShapingLoss(a, b)
    loss_mean = L.BatchShapingLoss(a, b, reduction="mean")
    prior = loss.prior

    # Same values and gradients, so the comparison is like for like (ties aside: torch.sort does not
    # break them by row, and the gradient of a tied element depends on the tie-break).
    loss(x_ours).backward()
    reference_loss(x_ref).backward()
    authors_loss(x_auth).backward()
    untied = ~tied(x)
    scale = x_ref.grad.abs().max().item()
    accuracy = {
        "abs_loss_diff_vs_reference": abs(loss(x).item() - reference_loss(x).item()),
        "abs_loss_diff_mean_vs_authors": abs(loss_mean(x).item() - authors_loss(x).item()),
        "tied_elements": int((~untied).sum()),
        "max_abs_grad_diff_vs_reference_untied": (x_ours.grad - x_ref.grad)[untied].abs().max().item(),
        "max_abs_grad_reference": scale,
    }

    def ours_fwd_bwd() -> None:
        x_ours.grad = None
        loss(x_ours).backward()

    def ref_fwd_bwd() -> None:
        x_ref.grad = None
        reference_loss(x_ref).backward()

    def authors_fwd_bwd() -> None:
        x_auth.grad = None
        authors_loss(x_auth).backward()

    def ours_fwd() -> None:
        with torch.no_grad():
            loss(x)

    # Pieces of ours, on the (G, N) layout the loss uses (workspace buffers, like the loss).
    ws = L._workspace(n, g)
    _, _, odds, cell = L._sort_columns_cpu(x, ws, True)
    odds, cell = odds.clone(), cell.clone()
    bufs = [torch.empty_like(odds) for _ in range(4)]
    clip = L.DEFAULT_PDF_CLIP
    xt_np = np.ascontiguousarray(x.numpy().T)
    xt = torch.from_numpy(xt_np)
    sorted_ref = torch.sort(x, dim=0).values.double().numpy()

    fast = {
        "ours: fwd+bwd": ours_fwd_bwd,
        "ours: fwd (no grad)": ours_fwd,
        "ours: ranks (transpose, odds, key sort, gathers)": lambda: L._sort_columns_cpu(x, ws, True),
        "ours: CDF (table)": lambda: prior._eval_odds(odds, cell, False, clip, bufs),
        "ours: CDF + pdf (table)": lambda: prior._eval_odds(odds, cell, True, clip, bufs),
        "numpy sort, rows of x.T": lambda: np.sort(xt_np, axis=1),
        "numpy argsort, rows of x.T": lambda: np.argsort(xt_np, axis=1),
    }
    slow = {
        "reference: fwd+bwd": ref_fwd_bwd,
        "authors' code path: fwd+bwd": authors_fwd_bwd,
        "reference: torch.sort dim 0": lambda: torch.sort(x, dim=0),
        "torch.sort, rows of x.T (contiguous)": lambda: torch.sort(xt, dim=1),
        "reference: scipy betainc (host)": lambda: special.betainc(a, b, sorted_ref),
        "reference: pdf (numpy closed form)": lambda: np.exp(
            (a - 1) * np.log(sorted_ref) + (b - 1) * np.log1p(-sorted_ref) - L._log_beta(a, b)
        ),
    }
    repeats = {k: args.repeats for k in fast} | {k: args.ref_repeats for k in slow}
    results = measure(fast | slow, repeats)

    ours = results["ours: fwd+bwd"]
    speedups = {}
    for ref in ("reference: fwd+bwd", "authors' code path: fwd+bwd"):
        speedups[ref] = {
            "wall": results[ref]["median_ms"] / ours["median_ms"],
            "cpu": results[ref]["cpu_median_ms"] / ours["cpu_median_ms"],
        }
    load = os.getloadavg()
    print(
        f"BatchShapingLoss, ({n}, {g}) float32, CPU, torch threads = {args.threads}, load avg {load[0]:.1f}"
    )
    print(f"{'':50s} {'median':>8s} {'p25':>8s} {'p75':>8s} {'cpu med':>8s}  (ms)")
    for name, r in results.items():
        cols = (r["median_ms"], r["p25_ms"], r["p75_ms"], r["cpu_median_ms"])
        print(f"{name:50s} " + " ".join(f"{c:8.2f}" for c in cols))
    for ref, sp in speedups.items():
        print(f"speed-up of fwd+bwd over {ref.split(':')[0]}: {sp['wall']:.1f}x wall, {sp['cpu']:.1f}x cpu")
    print("accuracy:", ", ".join(f"{k} {v:.3g}" for k, v in accuracy.items()))

    command = f"python benchmarks/bench_losses.py --n {n} --g {g} --threads {args.threads}"
    command += f" --repeats {args.repeats} --ref-repeats {args.ref_repeats}"
    record = {
        "benchmark": "BatchShapingLoss forward+backward vs reference implementations (CPU)",
        "command": command,
        "shape": [n, g],
        "dtype": "float32",
        "prior": [a, b],
        "threads": args.threads,
        "results": results,
        "speedup_fwd_bwd": speedups,
        "accuracy": accuracy,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": load,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
