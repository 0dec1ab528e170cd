"""The evaluation pass, plus everything the analysis needs: per-image difficulty measures and conditional
MACs, per-gate on-rates and mean probabilities, and per-module histograms of the gate probabilities
(accumulated, so memory does not grow with the number of gates times images).

The per-image measures depend on the task. Classification: the label, the top-1 prediction, the
cross-entropy and the entropy of the predicted distribution. Segmentation has no single prediction per
image; it gets the image's pixel accuracy and the mean cross-entropy and mean prediction entropy of its
labelled pixels, all at the label's resolution (where the task's metrics are computed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchshaping.evaluation import evaluate
from batchshaping.gates import GateOutput, gate_modules
from batchshaping.macs import MacCounter
from batchshaping.tasks import ClassificationTask, SegmentationTask, top_classes

#: Bins of the gate-probability histograms over [0, 1].
PROB_BINS = 50


@dataclass
class PassResult:
    """What :func:`collect` gathered over N images and G gates in L gating modules.

    loss, entropy, macs: (N,) float64 per image (nats, nats, MACs); for segmentation loss and entropy are
    means over the image's labelled pixels (NaN without any).
    label, pred: (N,) int64 true and top-1 class (classification; None for segmentation).
    pixel_acc: (N,) float64 fraction of the image's labelled pixels predicted right (segmentation; None
    for classification; NaN for an image without labelled pixels).
    on_rate, prob_mean: (G,) fraction of images with the gate open, mean gate probability.
    prob_hist: (L, PROB_BINS) counts of (image, gate) probabilities per module over [0, 1].
    layer_names / layer_sizes: the L gating modules in network order and their gate counts.
    metrics: what :func:`batchshaping.evaluation.evaluate` returned (the task's metrics, e.g. top1/top5 or
    miou/pixel_acc/class_iou, plus MACs and gate classes).
    num_classes: number of logits (channels of the logits for segmentation) of the model.
    """

    loss: np.ndarray
    entropy: np.ndarray
    macs: np.ndarray
    on_rate: np.ndarray
    prob_mean: np.ndarray
    prob_hist: np.ndarray
    layer_names: list[str]
    layer_sizes: list[int]
    metrics: dict[str, Any]
    num_classes: int
    label: np.ndarray | None = None
    pred: np.ndarray | None = None
    pixel_acc: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return len(self.macs)

    @property
    def segmentation(self) -> bool:
        return self.pixel_acc is not None

    @property
    def correct(self) -> np.ndarray:
        """(N,) bool: top-1 prediction equals the label (classification only)."""
        if self.label is None or self.pred is None:
            raise ValueError("a segmentation pass has no per-image top-1; see pixel_acc")
        return self.pred == self.label

    @property
    def top5_correct(self) -> int:
        """Number of images whose label is among the 5 highest logits (classification only)."""
        return round(self.metrics["top5"] * self.num_images)


def classification_measures(logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Per-image records of a classification batch: logits (N, K), labels y (N,) -> label, pred (N,)
    int64, loss and entropy (N,) in nats."""
    logp = logits.log_softmax(1)
    return {
        "label": y,
        "pred": top_classes(logits)[:, 0],  # the top-1 metric's ranking, ties included
        "loss": F.cross_entropy(logits, y, reduction="none"),
        "entropy": -(logp.exp() * logp).sum(1),
    }


def segmentation_measures(logits: Tensor, y: Tensor, ignore_index: int) -> dict[str, Tensor]:
    """Per-image records of a segmentation batch: logits (N, K, h, w), labels y (N, H, W) -> pixel_acc,
    loss and entropy (N,), each over the image's labelled pixels (NaN without any).

    Logits are upsampled bilinearly to the label's size first, as
    :class:`~batchshaping.tasks.SegmentationTask` does for its metrics.
    """
    y = y.long()
    if logits.shape[-2:] != y.shape[-2:]:
        logits = F.interpolate(logits, y.shape[-2:], mode="bilinear", align_corners=False)
    valid = y != ignore_index
    logp = logits.log_softmax(1)
    target = torch.where(valid, y, 0)
    pixel_loss = -logp.gather(1, target[:, None]).squeeze(1)
    pixel_entropy = -(logp.exp() * logp).sum(1)
    hits = (logits.argmax(1) == y) & valid
    pixels = valid.sum((1, 2)).double()  # 0 -> NaN below: no labelled pixel, no measure

    def mean(t: Tensor) -> Tensor:
        return torch.where(valid, t, 0).sum((1, 2)).double() / pixels

    return {"pixel_acc": mean(hits), "loss": mean(pixel_loss), "entropy": mean(pixel_entropy)}


def collect(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    counter: MacCounter,
    bins: int = PROB_BINS,
    *,
    task: ClassificationTask | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> PassResult:
    """Run ``model`` in eval mode over ``loader`` (normalised (x, y) batches) once, through the one
    evaluation pass (:func:`batchshaping.evaluation.evaluate`) with ``task`` (default classification) and
    ``autocast_dtype`` (None: fp32), and keep the per-image records.

    Gates forced with :func:`batchshaping.gates.force_gates` stay forced (masks and MACs follow the
    forced values; the probabilities are still those the gate computed).
    """
    task = task or ClassificationTask()
    segmentation = isinstance(task, SegmentationTask)
    keep: dict[str, list[Tensor]] = {}
    on_sum: list[Tensor] = []
    prob_sum: list[Tensor] = []
    hist: list[Tensor] = []
    num_classes = 0

    def observe(logits: Tensor, y: Tensor, outs: list[GateOutput], macs: Tensor) -> None:
        nonlocal num_classes
        num_classes = logits.shape[1]
        if segmentation:
            records = segmentation_measures(logits, y, task.ignore_index)
        else:
            records = classification_measures(logits, y)
        for k, v in {**records, "macs": macs.double()}.items():
            keep.setdefault(k, []).append(v)
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

    metrics = evaluate(model, loader, counter, task, autocast_dtype, observe=observe)
    arrays = {k: torch.cat(v).cpu().numpy() for k, v in keep.items()}
    n = len(arrays["macs"])
    sizes = [int(t.numel()) for t in on_sum]

    def per_gate(ts: list[Tensor]) -> np.ndarray:
        return torch.cat(ts).cpu().numpy() / n if ts else np.zeros(0)

    def optional(key: str, dtype: type) -> np.ndarray | None:
        return arrays[key].astype(dtype) if key in arrays else None

    return PassResult(
        loss=arrays["loss"].astype(np.float64),
        entropy=arrays["entropy"].astype(np.float64),
        macs=arrays["macs"],
        on_rate=per_gate(on_sum),
        prob_mean=per_gate(prob_sum),
        prob_hist=torch.stack(hist).cpu().numpy() if hist else np.zeros((0, bins)),
        layer_names=[name for name, _ in gate_modules(model)],
        layer_sizes=sizes,
        metrics=metrics,
        num_classes=num_classes,
        label=optional("label", np.int64),
        pred=optional("pred", np.int64),
        pixel_acc=optional("pixel_acc", np.float64),
    )
