"""How much does the batch-shaping phase slow early learning? A short, deterministic probe.

gated_resnet32 from the same initialisation trains for ``--steps`` SGD steps (lr 0.1, Nesterov, batch 128,
the first ``--images`` CIFAR-10 training images in a fixed order, no augmentation, 1 thread) in three
variants, and the script reports the cross-entropy and accuracy of the first and last 10 steps:

    none     cross-entropy only (the gates start ~95% open and stay there)
    bs       + 0.75 x batch-shaping (Beta(0.6, 0.4), sum over gates): the start of the paper's recipe
    detach   as bs, but the gates read a detached copy of the block input, so the batch-shaping gradient
             reaches only the gate MLPs, not the backbone

    python benchmarks/bs_phase_probe.py --data ../shared/data/cifar10   # ~7 min on 1 core; writes JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import batchshaping as bs
from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10, resolve_data_dir
from batchshaping.data.augment import normalize
from batchshaping.gates import ChannelGate, gate_outputs
from batchshaping.losses import BatchShapingLoss


def run(variant: str, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> dict:
    original = ChannelGate.logits
    if variant == "detach":
        ChannelGate.logits = lambda self, inp: original(self, inp.detach())  # type: ignore[method-assign]
    try:
        torch.manual_seed(0)
        model = bs.create_model("gated_resnet32").train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        shaping = BatchShapingLoss(0.6, 0.4, reduction="sum")
        w_bs = 0.0 if variant == "none" else 0.75
        ce_log, acc_log = [], []
        n_batches = len(x) // batch
        for step in range(steps):
            i = step % n_batches
            xb, yb = x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
            logits = model(xb)
            ce = F.cross_entropy(logits, yb)
            probs = torch.cat([o.probs for o in gate_outputs(model)], 1)
            loss = ce + w_bs * shaping(probs) if w_bs else ce
            opt.zero_grad()
            loss.backward()
            opt.step()
            ce_log.append(ce.item())
            acc_log.append((logits.argmax(1) == yb).float().mean().item())
        on_rate = torch.cat([o.mask for o in gate_outputs(model)], 1).mean().item()
    finally:
        ChannelGate.logits = original  # type: ignore[method-assign]
    return {
        "variant": variant,
        "ce_first10": round(statistics.fmean(ce_log[:10]), 4),
        "ce_last10": round(statistics.fmean(ce_log[-10:]), 4),
        "acc_last10": round(statistics.fmean(acc_log[-10:]), 4),
        "gate_on_rate_last_step": round(on_rate, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="CIFAR-10 folder (default: $BATCHSHAPING_DATA, then ./data/cifar10)")
    p.add_argument("--images", type=int, default=3840)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bs_phase_probe.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_cifar10(resolve_data_dir(args.data))
    x = torch.as_tensor(np.asarray(data.x_train[: args.images]))
    if x.shape[-1] == 3:  # NHWC uint8 -> NCHW
        x = x.permute(0, 3, 1, 2)
    x = normalize(x, CIFAR10_MEAN, CIFAR10_STD, channels_last=False)  # the training loaders' normalisation
    y = torch.as_tensor(np.asarray(data.y_train[: args.images])).long()
    t0 = time.perf_counter()
    rows = []
    for variant in ("none", "bs", "detach"):
        rows.append(run(variant, x, y, args.steps, args.batch))
        print(rows[-1], flush=True)
    result = {"steps": args.steps, "batch": args.batch, "images": args.images, "threads": 1, "rows": rows}
    result["seconds"] = round(time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
