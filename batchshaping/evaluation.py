"""The one evaluation pass: the task's metrics, conditional MACs and gate statistics of a model.

Training (every ``eval_every`` epochs), ``batchshaping eval`` and the gate analysis all run
:func:`evaluate`; the analysis adds its per-image records through the ``observe`` hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from batchshaping.gates import ALWAYS_OFF, ALWAYS_ON, GateOutput, gate_outputs
from batchshaping.macs import MacCounter
from batchshaping.runtime import autocast
from batchshaping.tasks import ClassificationTask

#: Called once per batch with (logits (N, ...) float32, labels, the gates' outputs, per-image MACs (N,)).
Observer = Callable[[Tensor, Tensor, list[GateOutput], Tensor], None]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    counter: MacCounter,
    task: ClassificationTask | None = None,
    autocast_dtype: torch.dtype | None = None,
    observe: Observer | None = None,
) -> dict[str, Any]:
    """Flat metrics of ``model`` (in eval mode) over ``loader``'s normalised (x, y) batches.

    Returns the task's metrics (default classification: top1, top5, test_loss) plus images (how many
    were evaluated), macs_mean, macs_dense, mac_ratio, the gate classes over the whole set
    (gates_always_on / _off / _conditional, fractions of all gates) and gate_on_rate_mean. Gates forced with
    :func:`batchshaping.gates.force_gates` stay forced.
    """
    task = task or ClassificationTask()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, Tensor] = {}
    on_counts: Tensor | None = None
    images, macs_sum = 0, torch.zeros((), dtype=torch.float64, device=device)
    try:
        for x, y in loader:
            with autocast(device, autocast_dtype):
                logits = model(x)
            logits = logits.float()
            for k, v in task.batch_sums(logits, y).items():
                sums[k] = sums[k] + v if k in sums else v
            outs = gate_outputs(model)
            macs = counter.conditional(outs).expand(len(y))
            macs_sum += macs.sum()
            images += len(y)
            if outs:
                mask = torch.cat([o.mask for o in outs], 1).sum(0)
                on_counts = mask if on_counts is None else on_counts + mask
            if observe is not None:
                observe(logits, y, outs, macs)
    finally:
        model.train(was_training)
    if images == 0:
        raise ValueError("the evaluation data is empty")
    on_rate = (on_counts / images).cpu() if on_counts is not None else torch.zeros(0)
    macs_mean = float(macs_sum) / images
    return {
        **task.metrics(sums),
        "images": images,
        "macs_mean": macs_mean,
        "macs_dense": float(counter.dense),
        "mac_ratio": macs_mean / float(counter.dense),
        **gate_class_fractions(on_rate),
    }


def gate_class_fractions(on_rate: Tensor) -> dict[str, float]:
    """Fractions of all gates that are always on / always off / conditional, from their on-rates (G,)
    over a test set, and the mean on-rate. A dense model (G = 0) counts as all on."""
    if on_rate.numel() == 0:
        return {
            "gates_always_on": 1.0,
            "gates_always_off": 0.0,
            "gates_conditional": 0.0,
            "gate_on_rate_mean": 1.0,
        }
    n = on_rate.numel()
    on = float((on_rate > ALWAYS_ON).sum()) / n
    off = float((on_rate < ALWAYS_OFF).sum()) / n
    return {
        "gates_always_on": on,
        "gates_always_off": off,
        "gates_conditional": 1.0 - on - off,
        "gate_on_rate_mean": float(on_rate.mean()),
    }
