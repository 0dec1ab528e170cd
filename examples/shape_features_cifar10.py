"""Batch-shaping beyond gates, on real data: a small CNN's penultimate features shaped to a Normal(0, 1) prior
while it trains on CIFAR-10.

    python examples/shape_features_cifar10.py --data-dir ../shared/data/cifar10 [--steps 300] [--weight 10]

Two runs from the same initialisation and the same batches of a 10,000-image training subset: cross-entropy
alone, and cross-entropy + weight * BatchShapingLoss(prior=NormalPrior(0, 1), dim=0, reduction="mean") on
the 32 penultimate features (the classifier is linear on them). Each feature's distribution over a batch is
pulled to N(0, 1): the features of a batch become standardised and Gaussian, without a normalisation layer.
Reports, on 2,000 test images, the accuracy and how Normal the features are: per feature the
Kolmogorov-Smirnov distance of its values over the test images to N(0, 1) (mean over the 32 features),
their mean and standard deviation. Writes ``shape_features_cifar10.json`` and a figure
``shape_features_cifar10.png`` (four features' histograms against the N(0, 1) density, both runs) to --out
and prints both paths. One thread, a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import batchshaping as bs
from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10, resolve_data_dir

OUT = Path(__file__).resolve().parent / "outputs"


class SmallCNN(nn.Module):
    """Three conv-ReLU-maxpool stages (16, 32, 32 channels), global average pool, a linear layer to the
    penultimate features (no activation: they may take any sign, as a Normal prior needs) and a linear
    classifier on them."""

    def __init__(self, features: int = 32, classes: int = 10) -> None:
        super().__init__()
        chans = (3, 16, 32, 32)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:], strict=False)
        )
        self.embed = nn.Linear(chans[-1], features)
        self.head = nn.Linear(features, classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, 3, 32, 32) -> (logits (N, classes), features (N, features))."""
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        feats = self.embed(x.mean((2, 3)))
        return self.head(feats), feats


def normalise(images: Tensor) -> Tensor:
    """uint8 (N, 3, 32, 32) -> float32 standardised with the CIFAR-10 channel statistics."""
    mean, std = torch.tensor(CIFAR10_MEAN)[:, None, None], torch.tensor(CIFAR10_STD)[:, None, None]
    return (images.float() / 255 - mean) / std


def ks_to_normal(feats: Tensor) -> Tensor:
    """Per column of feats (N, C): Kolmogorov-Smirnov distance of its N values to N(0, 1)."""
    v = torch.sort(feats.double(), dim=0).values
    f = bs.NormalPrior(0.0, 1.0).cdf(v)
    n = v.shape[0]
    i = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
    return torch.maximum(i / n - f, f - (i - 1) / n).amax(0)


def train(
    model: nn.Module, x: Tensor, y: Tensor, steps: int, batch: int, weight: float, seed: int
) -> list[float]:
    """SGD with momentum on cross-entropy (+ weight * batch-shaping of the features); the batch-shaping loss
    of every 50th step."""
    shaping = bs.BatchShapingLoss(prior=bs.NormalPrior(0.0, 1.0), dim=0, reduction="mean")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)  # the same batches for both runs
    order = torch.randperm(len(x), generator=gen)
    trace = []
    for step in range(steps):
        start = (step * batch) % (len(x) - batch + 1)
        idx = order[start : start + batch]
        xb = x[idx]
        xb = torch.where(torch.rand(len(xb), 1, 1, 1, generator=gen) < 0.5, xb, xb.flip(3))  # random flips
        logits, feats = model(xb)
        bs_loss = shaping(feats)
        loss = F.cross_entropy(logits, y[idx]) + (weight * bs_loss if weight else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            trace.append(round(bs_loss.detach().item(), 5))
    return trace


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict, Tensor]:
    model.eval()
    logits, feats = zip(*(model(x[i : i + 500]) for i in range(0, len(x), 500)), strict=True)
    model.train()
    logits, feats = torch.cat(logits), torch.cat(feats)
    ks = ks_to_normal(feats)
    shaping = bs.BatchShapingLoss(prior=bs.NormalPrior(0.0, 1.0), dim=0, reduction="mean")
    return {
        "test_top1": round(float((logits.argmax(1) == y).float().mean()), 4),
        "features_ks_to_N01_mean": round(float(ks.mean()), 4),
        "features_ks_to_N01_max": round(float(ks.max()), 4),
        "features_mean_abs_mean": round(float(feats.mean(0).abs().mean()), 4),
        "features_std_mean": round(float(feats.std(0).mean()), 4),
        "batch_shaping_loss_on_test_features": round(float(shaping(feats)), 5),
    }, feats


def save_figure(runs: dict[str, Tensor], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(9.0, 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(runs), 4)
    grid = torch.linspace(-4, 4, 200)
    density = bs.NormalPrior(0.0, 1.0).pdf(grid).numpy()
    for row, (name, feats) in enumerate(runs.items()):
        for col in range(4):
            ax = axes[row, col]
            ax.hist(feats[:, col].clamp(-4, 4).numpy(), bins=40, range=(-4, 4), density=True, color="#9ecae1")
            ax.plot(grid.numpy(), density, color="#d62728", lw=1.3)
            ax.set_title(f"feature {col}", fontsize=8)
            ax.tick_params(labelsize=6)
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("CIFAR-10 test images: penultimate features (blue) against N(0, 1) (red)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data-dir", default=None, help="CIFAR-10 folder (default: $BATCHSHAPING_DATA or ./data/cifar10)"
    )
    ap.add_argument("--steps", type=int, default=300, help="training steps of each run")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--train-images", type=int, default=10_000, help="the training subset")
    ap.add_argument("--test-images", type=int, default=2_000)
    ap.add_argument("--weight", type=float, default=10.0, help="weight of the batch-shaping loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data_dir = resolve_data_dir(args.data_dir)
    data = load_cifar10(data_dir)
    sub = np.random.default_rng(args.seed).choice(len(data.x_train), args.train_images, replace=False)
    x, y = normalise(data.x_train[sub]), data.y_train[sub]
    xt, yt = normalise(data.x_test[: args.test_images]), data.y_test[: args.test_images]
    torch.manual_seed(args.seed)
    init = SmallCNN()
    record: dict = {
        "command": f"python examples/shape_features_cifar10.py --data-dir {args.data_dir} "
        f"--steps {args.steps} --weight {args.weight}",
        "data": f"{data_dir} (train subset {args.train_images}, test {args.test_images})",
        "steps": args.steps,
        "batch": args.batch,
        "threads": 1,
    }
    feats = {}
    for name, weight in (("cross-entropy only", 0.0), (f"+ {args.weight:g} x batch-shaping", args.weight)):
        model = copy.deepcopy(init)
        t0 = time.perf_counter()
        trace = train(model, x, y, args.steps, args.batch, weight, args.seed)
        result, feats[name] = evaluate(model, xt, yt)
        record[name] = {**result, "train_batch_shaping_loss_every_50_steps": trace}
        record[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name:24s} " + ", ".join(f"{k} {v}" for k, v in result.items()), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    png, js = args.out / "shape_features_cifar10.png", args.out / "shape_features_cifar10.json"
    save_figure(feats, png)
    js.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {png} ({png.stat().st_size / 1024:.0f} KB) and {js}")


if __name__ == "__main__":
    main()
