"""A data set as the training loop and the evaluation pass take it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from batchshaping.tasks import ClassificationTask


@dataclass
class Data:
    """A data set, ready for :func:`~batchshaping.train.fit` and :func:`~batchshaping.evaluation.evaluate`.

    train / test: ``(x, y)`` tensors, x (N, C, H, W) uint8 (or float in [0, 1]) and y (N,) int64, kept on
    the device and augmented there (crop + flip) during training; or any iterables of ready, normalised
    (x, y) batches such as DataLoaders (then augmentation and normalisation are theirs, and under DDP they
    must shard). train is None when only evaluating.
    input_shape: (C, H, W) at which MACs are counted (None: the shape of the first test batch).
    mean / std: per-channel normalisation of tensor data (None: computed from the training images).
    task: loss and metrics (classification by default). root: the folder the data came from, if any.
    """

    train: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    task: ClassificationTask = field(default_factory=ClassificationTask)
    root: Path | None = None

    def __post_init__(self) -> None:
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Data: num_classes must be an int >= 1, got {k!r}")
        for split in ("train", "test"):
            pair = getattr(self, split)
            if isinstance(pair, tuple | list):
                if len(pair) != 2:
                    raise ValueError(
                        f"Data.{split}: give a pair (x, y) of images and labels, got {len(pair)} items"
                    )
                check_tensors(split, *pair, num_classes=k)


def check_tensors(split: str, x: Any, y: Any, num_classes: int) -> None:
    """What tensor data must be, checked once with a message that says the fix: x (N, C, H, W) uint8 or
    float in [0, 1] (the loaders scale uint8 by 1/255, then normalise), y (N,) class indices in
    [0, num_classes). One pass over the labels (and over float images), none per batch."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() != 4:
        raise ValueError(f"Data.{split}: images x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        raise ValueError(
            f"Data.{split}: images x of shape {tuple(x.shape)} look channels-last (N, H, W, C); "
            "give x.permute(0, 3, 1, 2), (N, C, H, W)"
        )
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(
            f"Data.{split}: labels y must be (N,), one per image, got {tuple(y.shape)} for {len(x)} images"
        )
    if x.dtype.is_floating_point:
        lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
        if not 0.0 <= lo <= hi <= 1.0:  # NaN fails too
            raise ValueError(
                f"Data.{split}: float images must lie in [0, 1], got values in [{lo:g}, {hi:g}]; "
                "give uint8 (0-255) or divide by 255"
            )
    elif x.dtype != torch.uint8:
        raise ValueError(f"Data.{split}: images must be uint8 (0-255) or float in [0, 1], got {x.dtype}")
    if y.dtype == torch.bool or y.is_complex() or (y.is_floating_point() and not torch.equal(y, y.round())):
        raise ValueError(f"Data.{split}: labels y must be integer class indices, got {y.dtype} values")
    if len(y):
        lo, hi = (int(v) for v in torch.aminmax(y))
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"Data.{split}: labels must be class indices in [0, {num_classes}), got [{lo}, {hi}]; "
                "num_classes counts the classes"
            )
