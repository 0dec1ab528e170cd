"""The tasks' metrics and losses on planted predictions, through the one evaluation pass."""

import math

import pytest
import torch
from torch import nn

from batchshaping.evaluation import evaluate
from batchshaping.macs import MacCounter
from batchshaping.tasks import SegmentationTask, class_iou, confusion_matrix, mean_iou


class Planted(nn.Module):
    """Returns fixed logits whatever the input (x is only used for its batch size)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def _planted_classification() -> tuple[torch.Tensor, torch.Tensor]:
    # Rank of the target among 7 classes: 1st, 3rd, 7th, 2nd, 5th, 6th.
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    logits = torch.zeros(6, 7)
    order = {0: 1, 1: 3, 2: 7, 3: 2, 4: 5, 5: 6}
    for i, rank in order.items():
        others = [c for c in range(7) if c != target[i]]
        ranking = others[: rank - 1] + [int(target[i])] + others[rank - 1 :]
        for pos, c in enumerate(ranking):
            logits[i, c] = 10.0 - pos
    return logits, target


def test_top1_and_top5_on_planted_predictions():
    logits, target = _planted_classification()
    counter = MacCounter(nn.Sequential(nn.Linear(2, 2)), (1, 1, 2))
    res = evaluate(Planted(logits), [(torch.zeros(6, 3, 2, 2), target)], counter)
    assert (res["top1"], res["top5"]) == pytest.approx((1 / 6, 4 / 6))
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert res["test_loss"] == pytest.approx(float(ce))


def test_confusion_matrix_and_miou_on_planted_predictions():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    iou = class_iou(cm)
    # class 0: 1 / (1 + 1), class 1: 2 / (2 + 1), class 2: 1 / 1, class 3: absent -> NaN, left out.
    assert iou[:3].tolist() == pytest.approx([0.5, 2 / 3, 1.0]) and math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    with pytest.raises(ValueError, match="outside 0..3"):
        confusion_matrix(pred, torch.tensor([[[0, 0, 1], [1, 4, 255]]]), 4)


def test_segmentation_evaluation_and_loss_on_planted_logits():
    target = torch.tensor([[[0, 0, 1, 1], [1, 2, 255, 2]]])  # (1, 2, 4)
    pred = torch.tensor([[[0, 1, 1, 1], [1, 2, 0, 0]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 5  # (1, 3, 2, 4)
    counter = MacCounter(nn.Sequential(nn.Conv2d(3, 3, 1)), (3, 2, 4))
    task = SegmentationTask(3, 255, "abc")
    m = evaluate(Planted(logits), [(torch.zeros(1, 3, 2, 4), target)], counter, task)
    # cm rows: 0 -> [1, 1, 0]; 1 -> [0, 3, 0]; 2 -> [1, 0, 1]
    assert m["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["class_iou"] == pytest.approx({"a": 1 / 3, "b": 3 / 4, "c": 1 / 2})
    assert m["macs_mean"] == m["macs_dense"] == 3 * 3 * 8 and "top1" not in m
    # Logits at half the label's resolution are upsampled to it before scoring.
    small = torch.zeros(1, 3, 1, 2)
    small[0, 1] = 1.0
    m = evaluate(Planted(small), [(torch.zeros(1, 3, 1, 2), target)], counter, SegmentationTask(3))
    assert m["pixel_acc"] == pytest.approx(3 / 7)
    task = SegmentationTask(3)
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(task.loss(logits, target.to(torch.uint8)), ce)
    assert float(task.loss(logits, torch.full_like(target, 255))) == 0.0  # an all-ignored crop is no NaN
    assert float(task.correct(logits, target)) == pytest.approx(5 / 7)
