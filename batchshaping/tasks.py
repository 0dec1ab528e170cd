"""What differs between image classification and semantic segmentation, and nothing else.

A task gives the training loop its loss and its logged training accuracy, and gives the evaluation pass
(:func:`batchshaping.evaluation.evaluate`) what to sum per batch and how to turn the sums into metrics.
Schedules, gate losses, checkpoints, DDP and logs are the same for every task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def top_classes(logits: Tensor, k: int = 5) -> Tensor:
    """logits (N, K) -> (N, min(k, K)) class indices, best first: the one ranking behind top-1, top-5 and
    every per-image prediction. argmax breaks ties between equal logits (not rare in bf16) the other way,
    so a prediction taken from it could disagree with the top-1 metric."""
    return logits.topk(min(k, logits.shape[1]), dim=1).indices


class ClassificationTask:
    """Image classification: logits (N, K), labels (N,). Metrics top-1, top-5, mean cross-entropy."""

    #: Evaluation metric (higher is better) that selects best.pt; the summary reports it as best_<metric>.
    metric = "top1"

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        #: Class names in index order, stored in checkpoints (evaluation then needs no training folder).
        self.class_names = list(class_names) if class_names is not None else None

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean task loss (0-d) of a batch."""
        return F.cross_entropy(logits.float(), y)

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-sample accuracies summed over the batch (0-d), for the logged train_acc."""
        return (logits.argmax(1) == y).float().sum()

    def batch_sums(self, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        """What one evaluation batch adds to the running sums (tensors on the model's device)."""
        if int(y.max()) >= logits.shape[1]:  # cross_entropy would fail with an opaque index error
            from batchshaping.data.errors import DataError

            raise DataError(
                f"the labels go up to {int(y.max())} but the model has {logits.shape[1]} outputs; "
                "is this the data set the model was trained on?"
            )
        top = top_classes(logits)
        return {
            "images": y.new_tensor(len(y)),
            "correct1": (top[:, 0] == y).sum(),
            "correct5": (top == y[:, None]).any(1).sum(),
            "loss": F.cross_entropy(logits, y, reduction="sum").double(),
        }

    def metrics(self, sums: dict[str, Tensor]) -> dict[str, Any]:
        """Metrics from the sums of :meth:`batch_sums` over the whole evaluation set."""
        n = float(sums["images"])
        return {
            "top1": float(sums["correct1"]) / n,
            "top5": float(sums["correct5"]) / n,
            "test_loss": float(sums["loss"]) / n,
        }


class SegmentationTask(ClassificationTask):
    """Per-pixel classification: logits (N, K, h, w), labels (N, H, W) with ``ignore_index`` pixels.

    Metrics are at the label's resolution (logits are upsampled bilinearly when smaller): mIoU (selects
    best.pt), pixel accuracy, per-class IoU and the mean cross-entropy over labelled pixels.
    """

    metric = "miou"

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None
    ) -> None:
        super().__init__(class_names)
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy over the labelled pixels (0 rather than NaN for a crop with none)."""
        y = y.long()
        total = F.cross_entropy(logits.float(), y, ignore_index=self.ignore_index, reduction="sum")
        return total / (y != self.ignore_index).sum().clamp(min=1)

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-image pixel accuracy over labelled pixels, summed over the batch."""
        valid = y != self.ignore_index
        hits = ((logits.argmax(1) == y) & valid).sum((1, 2)).float()
        return (hits / valid.sum((1, 2)).clamp(min=1)).sum()

    def batch_sums(self, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
        y = y.long()
        if logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, y.shape[-2:], mode="bilinear", align_corners=False)
        return {
            "loss": F.cross_entropy(logits, y, ignore_index=self.ignore_index, reduction="sum").double(),
            "pixels": (y != self.ignore_index).sum(),
            "confusion": confusion_matrix(logits.argmax(1), y, self.num_classes, self.ignore_index),
        }

    def metrics(self, sums: dict[str, Tensor]) -> dict[str, Any]:
        cm = sums["confusion"].cpu()
        iou = class_iou(cm)
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return {
            "test_loss": float(sums["loss"]) / max(int(sums["pixels"]), 1),
            "miou": mean_iou(cm),
            "pixel_acc": float(cm.diag().sum() / cm.sum().clamp(min=1)),
            "class_iou": {
                c: (None if v != v else float(v)) for c, v in zip(names, iou.tolist(), strict=True)
            },
        }


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted class.

    pred, target: integer tensors of the same shape (e.g. (N, H, W)); pixels whose target is
    ``ignore_index`` are left out. ValueError for any other target outside 0..num_classes-1.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"target values outside 0..{num_classes - 1} (and ignore {ignore_index})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_iou(confusion: Tensor) -> Tensor:
    """Per-class IoU = TP / (TP + FP + FN), (K,) float64; NaN for a class absent from targets and
    predictions alike (the official Cityscapes script leaves those out of the mean)."""
    cm = confusion.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: Tensor) -> float:
    """Mean of :func:`class_iou` over the classes that occur (NaN-mean)."""
    return float(class_iou(confusion).nanmean())
