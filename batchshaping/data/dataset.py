"""A data set as the training loop and the evaluation pass take it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
