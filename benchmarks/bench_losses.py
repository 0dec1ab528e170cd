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

``--priors`` measures instead every prior family (Beta, Beta(a, 1 - a), Normal, Relaxed Bernoulli; fixed
and trainable parameters) against the authors' reference implementation (Qualcomm-AI-research/batchshaping,
``gbas_loss``), whose formulas are written out below (not imported): torch.sort, then for Beta a numpy /
scipy round trip on the host (scipy CDF and density, and for trainable parameters the CDF on 11 parameter
values per parameter with np.gradient), for Normal and Relaxed Bernoulli torch formulas differentiated by
autograd. Both with reduction "mean" (the reference's), interleaved call by call. Writes
benchmarks/results/losses_priors.json.

    python -m benchmarks.bench_losses --priors --repeats 20
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

import numpy as np
import torch

from batchshaping import losses as new
from batchshaping import runtime
from batchshaping.priors import BetaPrior, NormalPrior, RelaxedBernoulliPrior, SymBetaPrior
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
    """The flags that decide bf16 and AVX-512 speed, for the results file."""
    return sorted(f for f in runtime.cpu_flags() if f.startswith(("amx", "avx512f", "avx512_bf16")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="batch size N")
    ap.add_argument("--g", type=int, default=2048, help="number of gates G")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts to run with")
    ap.add_argument("--repeats", type=int, default=40, help="timed calls of each function per thread count")
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision of the implementation to compare with")
    ap.add_argument("--out", type=Path, default=None, help="results file (default: by mode, in results/)")
    ap.add_argument("--priors", action="store_true", help="every prior against the reference code instead")
    ap.add_argument("--only", default="", help="--priors: only the cases whose name contains this")
    args = ap.parse_args()
    if args.priors:
        main_priors(args)
        return
    args.out = args.out or RESULTS / "losses.json"
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


# --------------------------------------------------------------------------------------------------------
# Priors against the reference implementation


def _ref_sorted_columns(x: torch.Tensor) -> torch.Tensor:
    """The reference's layout for per-column shaping of (N, G) x (its dim=1): (G, N) rows, sorted."""
    rows = x.transpose(1, 0).reshape(x.shape[1], -1)
    return torch.sort(rows, dim=-1)[0]


def _ref_param(value: float | torch.Tensor) -> torch.Tensor:
    """validate_prior_param: floats become (1, 1) float32 tensors, scalar tensors (1, 1) views."""
    if isinstance(value, float):
        return torch.ones(1, 1) * value
    return value[None, None]


class _RefBetaCDF(torch.autograd.Function):
    """Reference BaS Beta CDF: scipy CDF and density on the host, density clipped to [1e-3, 100]."""

    @staticmethod
    def forward(ctx, inp: torch.Tensor, a: float, b: float) -> torch.Tensor:  # type: ignore[override]
        from scipy.stats import beta as beta_scipy

        x = inp.detach().clone().numpy()
        pdf = torch.tensor(np.clip(beta_scipy.pdf(x, a=a, b=b), 1e-3, 100), dtype=torch.float32)
        ctx.save_for_backward(pdf)
        return torch.tensor(beta_scipy.cdf(x, a=a, b=b), dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.saved_tensors[0] * grad, None, None


class _RefBetaCDFTrainable(torch.autograd.Function):
    """Reference gBaS Beta CDF: the parameter derivatives by np.gradient over 11 parameter values each
    (eps 0.05), for Beta(a, b) or (symmetric=True) Beta(a, 1 - a)."""

    @staticmethod
    def forward(ctx, inp: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor | None, symmetric: bool):  # type: ignore[override]
        from scipy.stats import beta as beta_scipy

        num_pts, eps = 5, 0.05
        x = inp.detach().clone().numpy()
        a = float(pa.detach().numpy().reshape(()))
        b = 1 - a if symmetric else float(pb.detach().numpy().reshape(()))
        pdf = torch.tensor(np.clip(beta_scipy.pdf(x, a=a, b=b), 1e-3, 100), dtype=torch.float32)
        cdf = torch.tensor(beta_scipy.cdf(x, a=a, b=b), dtype=torch.float32)
        hi = min(1 - eps, a + eps) if symmetric else a + eps
        alphas = np.linspace(max(eps, a - eps), hi, num_pts * 2 + 1)
        f = np.stack([beta_scipy.cdf(x, a=al, b=1 - al if symmetric else b) for al in alphas], axis=0)
        grads = [torch.tensor(np.gradient(f, alphas, axis=0)[num_pts], dtype=torch.float32)]
        if not symmetric:
            betas = np.linspace(max(eps, b - eps), b + eps, num_pts * 2 + 1)
            f = np.stack([beta_scipy.cdf(x, a=a, b=be) for be in betas], axis=0)
            grads.append(torch.tensor(np.gradient(f, betas, axis=0)[num_pts], dtype=torch.float32))
        ctx.save_for_backward(pdf, *grads)
        return cdf

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        pdf, *grads = ctx.saved_tensors
        pgrads = [g * grad for g in grads]  # autograd sums them to the parameter's shape
        return pdf * grad, pgrads[0], pgrads[1] if len(pgrads) > 1 else None, None


def reference_loss(x: torch.Tensor, family: str, p1: float | torch.Tensor, p2: float | torch.Tensor | None):
    """gbas_loss(x, prior, p1, p2, trainable_prior_params=tensor parameters, dim=1) of the reference code,
    its formulas written out: per-column shaping of (N, G) x, reduction "mean"."""
    trainable = isinstance(p1, torch.Tensor)
    xs = _ref_sorted_columns(x)
    if family in ("beta", "symbeta"):
        symmetric = family == "symbeta"
        if trainable:
            pa = _ref_param(p1)[0]
            pb = None if symmetric else _ref_param(p2)[0]
            pcdf = _RefBetaCDFTrainable.apply(xs, pa, pb, symmetric)
        else:
            pcdf = _RefBetaCDF.apply(xs, p1, 1 - p1 if symmetric else p2)
    elif family == "normal":
        mean, std = _ref_param(p1), _ref_param(p2)
        pcdf = 0.5 * (1 + torch.special.erf((xs - mean) / (np.sqrt(2) * std)))
    else:  # relaxed Bernoulli, with the reference's clip of x to [1e-3, 1 - 1e-3]
        mean, temperature = _ref_param(p1), _ref_param(p2)
        xc = torch.clip(xs, 1e-3, 1 - 1e-3)
        loga = torch.special.xlog1py(temperature, -xc)
        loga -= torch.special.xlogy(temperature, xc)
        logp = torch.special.logit(mean)
        pcdf = torch.special.expit(-loga - logp)
    n = xs.shape[1]
    ecdf = torch.arange(1, n + 1, dtype=torch.float) / (n + 1)
    return torch.mean(torch.sum((ecdf[None, :] - pcdf) ** 2, dim=-1) / n)


#: (case, family, parameters, input): the reference code's four families, fixed and trainable (scalar
#: parameters: the reference's per-column Beta evaluates every column against every prior, see the README).
PRIOR_CASES = [
    ("beta(0.6, 0.4)", "beta", (0.6, 0.4), "probs"),
    ("symbeta(0.6)", "symbeta", (0.6, None), "probs"),
    ("normal(0.5, 0.3)", "normal", (0.5, 0.3), "features"),
    ("relaxed_bernoulli(0.3, 0.5)", "relaxed_bernoulli", (0.3, 0.5), "probs"),
    ("beta(0.6, 0.4), trainable", "beta", (0.6, 0.4), "probs"),
    ("symbeta(0.6), trainable", "symbeta", (0.6, None), "probs"),
    ("normal(0.5, 0.3), trainable", "normal", (0.5, 0.3), "features"),
    ("relaxed_bernoulli(0.3, 0.5), trainable", "relaxed_bernoulli", (0.3, 0.5), "probs"),
]


def our_prior(family: str, p1: float | torch.Tensor, p2: float | torch.Tensor | None):
    if family == "beta":
        return BetaPrior(p1, p2)
    if family == "symbeta":
        return SymBetaPrior(p1)
    if family == "normal":
        return NormalPrior(p1, p2)
    return RelaxedBernoulliPrior(p1, p2)


def step(loss_fn: Callable[[], torch.Tensor], tensors: list, last: dict, key: str) -> Callable[[], None]:
    """One forward + backward of loss_fn, gradients of ``tensors`` reset first; the loss kept in last[key]."""

    def call() -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                t.grad = None
        out = loss_fn()
        out.backward()
        last[key] = out.detach()

    return call


def measure_prior(
    family: str, v1: float, v2: float | None, trainable: bool, x: torch.Tensor, repeats: int
) -> dict:
    """Reference against ours on x for one prior: times, ratios, losses and gradients side by side."""

    def params() -> list:
        return [
            None if v is None else torch.tensor(v, requires_grad=True) if trainable else v for v in (v1, v2)
        ]

    ref_p, our_p = params(), params()
    ours = new.BatchShapingLoss(prior=our_prior(family, *our_p), reduction="mean", dim=0)
    x_ref, x_our = x.clone().requires_grad_(), x.clone().requires_grad_()
    last: dict[str, torch.Tensor] = {}
    fns = {
        "reference": step(lambda: reference_loss(x_ref, family, *ref_p), [x_ref, *ref_p], last, "reference"),
        "ours": step(lambda: ours(x_our), [x_our, *our_p], last, "ours"),
    }
    t0 = time.perf_counter()
    fns["reference"]()
    slow = time.perf_counter() - t0 > 0.3  # the scipy paths of trainable Beta take seconds per call
    res = measure(fns, max(3, repeats // 5) if slow else repeats, warmup=1 if slow else 3)
    grads = {
        "x_max_abs_diff": (x_ref.grad - x_our.grad).abs().max().item(),
        "x_max_abs": x_ref.grad.abs().max().item(),
    }
    for k, (rp, op) in enumerate(zip(ref_p, our_p, strict=True)):
        if isinstance(op, torch.Tensor):
            grads[f"param{k + 1}_reference"] = rp.grad.item()
            grads[f"param{k + 1}_ours"] = op.grad.item()
    return {
        "results": res,
        "reference_over_ours": {
            "wall": res["reference"]["median_ms"] / res["ours"]["median_ms"],
            "cpu": res["reference"]["cpu_median_ms"] / res["ours"]["cpu_median_ms"],
        },
        "loss": {"reference": last["reference"].item(), "ours": last["ours"].item()},
        "gradients": grads,
        "load_average": os.getloadavg(),
    }


def main_priors(args: argparse.Namespace) -> None:
    n, g = args.n, args.g
    out = args.out or RESULTS / "losses_priors.json"
    torch.set_num_threads(args.threads[0])
    torch.manual_seed(0)
    inputs = {"probs": torch.rand(n, g), "features": torch.randn(n, g) * 0.3 + 0.5}
    load_before = os.getloadavg()
    cases = {}
    for name, family, (v1, v2), kind in PRIOR_CASES:
        if args.only and args.only not in name:
            continue
        case = cases[name] = measure_prior(
            family, v1, v2, name.endswith("trainable"), inputs[kind], args.repeats
        )
        res, ratio, loss = case["results"], case["reference_over_ours"], case["loss"]
        print(
            f"{name:40s} reference {res['reference']['cpu_median_ms']:9.1f} ms cpu, ours "
            f"{res['ours']['cpu_median_ms']:7.2f} ms cpu: {ratio['cpu']:6.1f}x cpu "
            f"({ratio['wall']:.1f}x wall); loss {loss['reference']:.6g} vs {loss['ours']:.6g}",
            flush=True,
        )
    record = {
        "benchmark": "BatchShapingLoss forward+backward per prior against the reference implementation (CPU)",
        "command": f"python -m benchmarks.bench_losses --priors --n {n} --g {g} --threads {args.threads[0]} "
        f"--repeats {args.repeats}" + (f" --only '{args.only}'" if args.only else ""),
        "shape": [n, g],
        "dtype": "float32",
        "reduction": "mean",
        "threads": args.threads[0],
        "cases": cases,
        "min_ratio_cpu": min(c["reference_over_ours"]["cpu"] for c in cases.values()),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": {
            **machine(),
            "cpu_flags": cpu_flags(),
            "numpy": np.__version__,
            "note": "shared machine: other jobs ran at the same time (see the load averages); ratios are of "
            "median process CPU times measured side by side",
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
