"""Batch-shaping fits a batch of points to each prior family: the histogram of the points against the prior's
density, before and after (what the authors' notebooks show as GIFs), as one PNG.

    python examples/fit_priors.py [--steps 1200] [--out examples/outputs]

Rows 1-4: 2,000 points optimised with Adam on ``BatchShapingLoss(prior=..., dim=None)`` alone (all points
one distribution): logits through a sigmoid for the priors on [0, 1] (Beta(2, 6), Beta(0.9, 0.1) as
SymBetaPrior(0.9), Relaxed Bernoulli(0.2, 0.25)), raw values for Normal(1, 0.5). Row 5, the generalized loss
of the reference notebook: 30 columns of 500 points, each with its own Relaxed Bernoulli prior whose mean
and temperature are learned too, the means held by a Beta(3, 7) hyperprior (and an L1 pull on the
temperatures): the histogram of the 30 learned means against the hyperprior's density.

Writes ``fit_priors.png`` (a small palette PNG) and ``fit_priors.json`` (Kolmogorov-Smirnov distance of the
points to their prior, before and after) to --out, and prints both paths.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import batchshaping as bs

OUT = Path(__file__).resolve().parent / "outputs"


def ks_distance(x: Tensor, prior: bs.Prior) -> float:
    """Kolmogorov-Smirnov distance of the points x (1-D) to the prior: max |F(x_(i)) - ECDF|."""
    v = torch.sort(x.detach().double().flatten()).values
    f = prior.cdf(v)
    n = v.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - f, f - (i - 1) / n).max())


def fit_points(
    prior: bs.Prior, unit: bool, steps: int, n: int = 2000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """n points from a narrow start (gates ~88% on, or N(-1, 0.2)) optimised to the prior; (before, after)."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(n, generator=gen, dtype=torch.float64)
    # float64: the U-shaped priors keep mass within 1e-8 of 0 or 1, beyond a float32 sigmoid's reach
    raw = nn.Parameter(2 + 0.3 * start if unit else -1 + 0.2 * start)
    points = (lambda: torch.sigmoid(raw)) if unit else (lambda: raw)
    before = points().detach().clone()
    shaping = bs.BatchShapingLoss(prior=prior, dim=None)
    # betas[1] 0.9: saturating points see their gradient shrink fast, a long memory of it would stall them
    opt = torch.optim.Adam([raw], lr=0.2, betas=(0.9, 0.9), eps=1e-30)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        shaping(points()).backward()
        opt.step()
        sched.step()
    return before, points().detach()


def fit_generalized(steps: int, columns: int = 30, n: int = 500, seed: int = 0) -> dict:
    """The generalized loss (MSViT; the reference's generalized notebook): per-column Relaxed Bernoulli
    priors with learned means and temperatures, a Beta(3, 7) hyperprior on the means."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(columns, generator=gen)
    data = nn.Parameter(4 * (2 * (centres + 0.05 * torch.randn(n, columns, generator=gen)).clamp(0, 1) - 1))
    mean_raw = nn.Parameter(0.01 * torch.randn(columns, generator=gen))  # means start at ~0.5
    temp_raw = nn.Parameter(torch.zeros(columns))
    hyperprior = bs.BetaPrior(3.0, 7.0)
    shaping = bs.BatchShapingLoss(
        dim=0,
        reduction="mean",
        hyperprior={"mean": hyperprior, "temperature": lambda t: 0.1 * t.abs().mean()},
    )
    opt = torch.optim.Adam([data, mean_raw, temp_raw], lr=0.1)
    before = torch.sigmoid(mean_raw).detach().clone()
    for _ in range(steps):
        opt.zero_grad()
        prior = bs.RelaxedBernoulliPrior(torch.sigmoid(mean_raw), torch.sigmoid(temp_raw))
        shaping(torch.sigmoid(data), prior=prior).backward()
        opt.step()
    means = torch.sigmoid(mean_raw).detach()
    return {
        "before": before,
        "after": means,
        "temperature": torch.sigmoid(temp_raw).detach(),
        "hyperprior": hyperprior,
    }


def save_png(fig, path: Path) -> None:  # noqa: ANN001  (a matplotlib Figure)
    """The figure as a 256-colour palette PNG (a third of the RGB file: plots have few colours)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200, help="Adam steps per fit")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for fit_priors.png and fit_priors.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cases = [
        ("Beta(2, 6)", bs.BetaPrior(2.0, 6.0), True),
        ("SymBeta(0.9) = Beta(0.9, 0.1)", bs.SymBetaPrior(0.9), True),
        ("Relaxed Bernoulli(0.2, 0.25)", bs.RelaxedBernoulliPrior(0.2, 0.25), True),
        ("Normal(1, 0.5)", bs.NormalPrior(1.0, 0.5), False),
    ]
    fig = Figure(figsize=(8.0, 11.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(cases) + 1, 2)
    record: dict = {"command": f"python examples/fit_priors.py --steps {args.steps}", "steps": args.steps}
    t0 = time.perf_counter()
    for row, (name, prior, unit) in enumerate(cases):
        before, after = fit_points(prior, unit, args.steps)
        grid = torch.linspace(0.002, 0.998, 400) if unit else torch.linspace(-1.8, 3.0, 400)
        density = prior.pdf(grid).numpy()
        ks = {"before": ks_distance(before, prior), "after": ks_distance(after, prior)}
        record[name] = {"ks_distance": ks, "points": before.numel()}
        for col, (when, pts) in enumerate((("before", before), ("after", after))):
            ax = axes[row, col]
            lo, hi = float(grid[0]), float(grid[-1])
            ax.hist(pts.clamp(lo, hi).numpy(), bins=50, range=(lo, hi), density=True, color="#9ecae1")
            ax.plot(grid.numpy(), density, color="#d62728", lw=1.5)
            ax.set_ylim(0, max(4.0, 1.2 * float(np.percentile(density, 90))) if unit else None)
            ax.set_title(f"{name}, {when}: KS {ks[when]:.3f}", fontsize=9)
            ax.tick_params(labelsize=7)
        print(f"{name:32s} KS distance {ks['before']:.3f} -> {ks['after']:.3f}", flush=True)
    gen = fit_generalized(args.steps)
    hp = gen["hyperprior"]
    grid = torch.linspace(0.002, 0.998, 400)
    ks = {"before": ks_distance(gen["before"], hp), "after": ks_distance(gen["after"], hp)}
    record["generalized: 30 learned Relaxed Bernoulli means vs Beta(3, 7) hyperprior"] = {
        "ks_distance": ks,
        "learned_means": [round(float(v), 4) for v in gen["after"]],
        "learned_temperatures": [round(float(v), 4) for v in gen["temperature"]],
    }
    for col, when in enumerate(("before", "after")):
        ax = axes[-1, col]
        ax.hist(gen[when].numpy(), bins=20, range=(0, 1), density=True, color="#a1d99b")
        ax.plot(grid.numpy(), hp.pdf(grid).numpy(), color="#d62728", lw=1.5)
        ax.set_title(f"30 learned RB means vs Beta(3, 7), {when}: KS {ks[when]:.3f}", fontsize=9)
        ax.tick_params(labelsize=7)
    print(f"{'generalized (hyperprior on means)':32s} KS distance {ks['before']:.3f} -> {ks['after']:.3f}")
    fig.suptitle(
        "batch-shaping: histogram of the batch (blue/green) against the prior's density (red)", fontsize=10
    )
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    png, js = args.out / "fit_priors.png", args.out / "fit_priors.json"
    save_png(fig, png)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    js.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {png} ({png.stat().st_size / 1024:.0f} KB) and {js}")


if __name__ == "__main__":
    main()
