"""The evaluation pass, plus everything the analysis needs: per-image predictions, losses, entropies
and conditional MACs, per-gate on-rates and mean probabilities, and per-module histograms of the gate
probabilities (accumulated, so memory does not grow with the number of gates times images)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchshaping.evaluation import evaluate
from batchshaping.gates import GateOutput, gate_modules
from batchshaping.macs import MacCounter

#: Bins of the gate-probability histograms over [0, 1].
PROB_BINS = 50


@dataclass
class PassResult:
    """What :func:`collect` gathered over N images and G gates in L gating modules.

    label, pred, loss, entropy, macs: (N,) arrays (int64, int64, float64 nats, float64 nats, float64).
    on_rate, prob_mean: (G,) fraction of images with the gate open, mean gate probability.
    prob_hist: (L, PROB_BINS) counts of (image, gate) probabilities per module over [0, 1].
    layer_names / layer_sizes: the L gating modules in network order and their gate counts.
    top5_correct: number of images whose label is among the 5 highest logits.
    num_classes: number of logits of the model.
    """

    label: np.ndarray
    pred: np.ndarray
    loss: np.ndarray
    entropy: np.ndarray
    macs: np.ndarray
    on_rate: np.ndarray
    prob_mean: np.ndarray
    prob_hist: np.ndarray
    layer_names: list[str]
    layer_sizes: list[int]
    top5_correct: int
    num_classes: int

    @property
    def num_images(self) -> int:
        return len(self.label)

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool: top-1 prediction equals the label."""
        return self.pred == self.label


def collect(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], counter: MacCounter, bins: int = PROB_BINS
) -> PassResult:
    """Run ``model`` in eval mode over ``loader`` (normalised (x, y) batches) once, through the one
    evaluation pass (:func:`batchshaping.evaluation.evaluate`), and keep the per-image records.

    Gates forced with :func:`batchshaping.gates.force_gates` stay forced (masks and MACs follow the
    forced values; the probabilities are still those the gate computed).
    """
    keep: dict[str, list[Tensor]] = {k: [] for k in ("label", "pred", "loss", "entropy", "macs")}
    on_sum: list[Tensor] = []
    prob_sum: list[Tensor] = []
    hist: list[Tensor] = []
    num_classes = 0

    def observe(logits: Tensor, y: Tensor, outs: list[GateOutput], macs: Tensor) -> None:
        nonlocal num_classes
        num_classes = logits.shape[1]
        logp = logits.log_softmax(1)
        keep["label"].append(y)
        keep["pred"].append(logits.argmax(1))
        keep["loss"].append(F.cross_entropy(logits, y, reduction="none"))
        keep["entropy"].append(-(logp.exp() * logp).sum(1))
        keep["macs"].append(macs.double())
        for i, o in enumerate(outs):
            p = o.probs.float()
            # Bin b holds [b, b + 1) / bins (1.0 in the last bin); bincount is faster than histc on CPU.
            batch_hist = torch.bincount((p * bins).long().clamp_(0, bins - 1).flatten(), minlength=bins)
            if i == len(on_sum):
                on_sum.append(o.mask.sum(0).double())
                prob_sum.append(p.sum(0).double())
                hist.append(batch_hist.double())
            else:
                on_sum[i] += o.mask.sum(0)
                prob_sum[i] += p.sum(0)
                hist[i] += batch_hist

    metrics = evaluate(model, loader, counter, observe=observe)
    arrays = {k: torch.cat(v).cpu().numpy() for k, v in keep.items()}
    n = len(arrays["label"])
    sizes = [int(t.numel()) for t in on_sum]

    def per_gate(ts: list[Tensor]) -> np.ndarray:
        return torch.cat(ts).cpu().numpy() / n if ts else np.zeros(0)

    return PassResult(
        label=arrays["label"].astype(np.int64),
        pred=arrays["pred"].astype(np.int64),
        loss=arrays["loss"].astype(np.float64),
        entropy=arrays["entropy"].astype(np.float64),
        macs=arrays["macs"],
        on_rate=per_gate(on_sum),
        prob_mean=per_gate(prob_sum),
        prob_hist=torch.stack(hist).cpu().numpy() if hist else np.zeros((0, bins)),
        layer_names=[name for name, _ in gate_modules(model)],
        layer_sizes=sizes,
        top5_correct=round(metrics["top5"] * n),
        num_classes=num_classes,
    )
