"""``batchshaping analyze``: one checkpoint on its data set's test split -> report.md, the plots,
analysis.json and per_image.npz, from a single evaluation pass.

The test split comes from :func:`batchshaping.experiment.load_data`, as for ``batchshaping eval``, so
every data set and task that ``eval`` takes is analysed (CIFAR-10, ImageNet, Cityscapes). This module
reads the checkpoint and the data and writes the files; :mod:`~batchshaping.analysis.collect` runs the
pass, :mod:`~batchshaping.analysis.numbers` turns it into numbers, and :mod:`~batchshaping.analysis.figures`
and :mod:`~batchshaping.analysis.markdown` render those.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from batchshaping.analysis.collect import PassResult, collect
from batchshaping.analysis.figures import image_source, write_plots
from batchshaping.analysis.formatting import DATASET_NAMES
from batchshaping.analysis.markdown import render_report
from batchshaping.analysis.numbers import build_analysis, json_safe
from batchshaping.analysis.outputs import prepare_out, written_files
from batchshaping.data import Data, as_loader
from batchshaping.runtime import memory_format, precision_name
from batchshaping.tasks import ClassificationTask, SegmentationTask

if TYPE_CHECKING:
    from batchshaping.config import TrainConfig

#: Titles of the test split that ``analyze`` reads for each data.dataset.
TEST_SPLITS = {"cifar10": "CIFAR-10 test", "imagenet": "ImageNet val", "cityscapes": "Cityscapes val"}


def analyze_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    *,
    test_data: tuple[Tensor, Tensor] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    data_name: str | None = None,
    batch_size: int | None = None,
    make_plots: bool = True,
    download: bool = False,
) -> list[Path]:
    """Analyse a checkpoint (a .pt file or a run folder) on a test set; write plots, report.md and
    analysis.json (plus per_image.npz) into ``out``.

    Returns the paths written, under ``out``: report.md first, then the PNGs (none for a dense model or
    with ``make_plots=False``), analysis.json and per_image.npz (:func:`describe_outputs` makes a line of
    them for the command line).

    The test set is the test split of the checkpoint's data set, found as ``batchshaping eval`` finds it
    (``data_dir``, else the folder the run was trained on, $BATCHSHAPING_DATA, ./data/cifar10) and
    normalised as in training; ``max_images`` keeps its first N images, ``batch_size`` overrides the
    config's data.eval_batch_size. ``test_data=(x, y)`` replaces it for a classifier -- x (N, C, H, W)
    uint8 (or float in [0, 1]), y (N,) int64 -- normalised with ``mean``/``std`` (C,) (default: the
    checkpoint's data set's), with class names ``classes`` and a name ``data_name`` for titles.
    ``download`` fetches the official CIFAR-10 archive when the data is missing.

    Raises CheckpointError (missing/corrupt checkpoint), PermissionError (``out`` not writable),
    DataError (data not found) and ConfigError (bad arguments).
    """
    from batchshaping.checkpoint import load_checkpoint, model_from_checkpoint
    from batchshaping.config import ConfigError
    from batchshaping.runtime import resolve_device, resolve_precision

    if max_images is not None and max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {max_images}")
    ckpt = load_checkpoint(checkpoint)  # on the CPU: the optimizer state need not visit the GPU
    device = resolve_device("auto")
    model, cfg = model_from_checkpoint(ckpt, device)
    # The run's own precision, as its evaluations in training and `batchshaping eval` use: bf16 and fp32
    # can set a gate near its threshold differently, so the analysis reports the numbers eval reports.
    autocast_dtype = resolve_precision(cfg.precision, device)
    source = {
        "checkpoint": str(checkpoint),
        "epoch": int(ckpt["epoch"]),
        "epochs": cfg.epochs,
        "config": cfg.name,
        "loss": {
            "bs_weight": cfg.loss.bs_weight,
            "l0_weight": cfg.loss.l0_weight,
            "macs_target": cfg.loss.macs_target,
            "macs_weight": cfg.loss.macs_weight,
        },
    }
    saved_classes = ckpt.get("class_names")
    del ckpt
    out_path = prepare_out(out)  # before the data load and the pass: fail fast
    if batch_size is not None:
        cfg.data.eval_batch_size = batch_size
    if test_data is None:
        data = _test_split(cfg, data_dir, max_images, saved_classes, download)
        if classes is not None and not isinstance(data.task, SegmentationTask):
            data.task = ClassificationTask(classes)
        data_name = data_name or TEST_SPLITS.get(cfg.data.dataset, f"{cfg.data.dataset} test")
    else:
        from batchshaping.experiment import normalization

        if cfg.data.dataset == "cityscapes":
            raise ConfigError(
                "test_data takes classification images and labels; a segmentation model reads its data set"
            )
        x, y = (torch.as_tensor(t)[:max_images] for t in test_data)
        default_mean, default_std = normalization(cfg.data.dataset)
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
        data = tensor_data(x, y, mean, std, classes if classes is not None else saved_classes)
        data_name = data_name or f"{DATASET_NAMES.get(cfg.data.dataset, cfg.data.dataset)}-like test data"
    analysis = analyze_data(
        model, data, out_path, model_name=cfg.model, data_name=data_name,
        batch_size=cfg.data.eval_batch_size, source=source, make_plots=make_plots,
        autocast_dtype=autocast_dtype, channels_last=cfg.channels_last,
    )  # fmt: skip
    return written_files(out_path, analysis)


def _test_split(
    cfg: TrainConfig,
    data_dir: str | os.PathLike[str] | None,
    max_images: int | None,
    class_names: list[str] | None,
    download: bool = False,
) -> Data:
    """The test split of the checkpoint config ``cfg``'s data set, its first ``max_images`` images (all for
    None), through the one :func:`~batchshaping.experiment.load_data`."""
    from batchshaping.experiment import load_data

    cfg.data.download = download  # the run's own setting does not count: only the command's
    cfg.data.test_subset = max_images
    return load_data(
        cfg, str(data_dir) if data_dir is not None else None, train=False, class_names=class_names
    )


def tensor_data(
    x: Tensor,
    y: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
) -> Data:
    """Classification test data from images x (N, C, H, W) uint8 or float in [0, 1] and labels y (N,),
    normalised with ``mean``/``std`` (C,) (default: none, x in [0, 1] is fed as it is), MACs counted at
    x's (C, H, W)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)  # Data checks them (labels: integer class indices)
    if len(x) == 0:
        raise ValueError("the test data is empty")
    c = x.shape[1]
    return Data(
        None,
        (x, y),
        len(classes) if classes is not None else int(y.max()) + 1,
        tuple(x.shape[1:]),
        list(mean) if mean is not None else [0.0] * c,
        list(std) if std is not None else [1.0] * c,
        ClassificationTask(classes),
    )


def analyze_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    out: str | os.PathLike[str],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    model_name: str = "model",
    data_name: str = "test data",
    batch_size: int = 500,
    source: dict[str, Any] | None = None,
    make_plots: bool = True,
) -> dict[str, Any]:
    """:func:`analyze_data` of a classifier on images x (N, C, H, W) uint8 or float in [0, 1] and labels
    y (N,), normalised with ``mean``/``std`` (C,) as in training (default: none). Returns the analysis.json
    dict."""
    data = tensor_data(x, y, mean, std, classes)
    return analyze_data(
        model, data, out, model_name=model_name, data_name=data_name, batch_size=batch_size, source=source,
        make_plots=make_plots,
    )  # fmt: skip


def analyze_data(
    model: nn.Module,
    data: Data,
    out: str | os.PathLike[str],
    *,
    model_name: str = "model",
    data_name: str = "test data",
    batch_size: int = 500,
    source: dict[str, Any] | None = None,
    make_plots: bool = True,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Analyse ``model`` (any device; evaluated in eval mode under autocast to ``autocast_dtype``, None:
    fp32; weights and batches channels_last unless ``channels_last=False``) on ``data.test`` with
    ``data.task``; write the outputs into ``out`` (the files :func:`written_files` lists). Returns the
    analysis.json dict.

    ``batch_size`` applies to tensor data (a DataLoader has its own). ``make_plots=False`` writes the
    numbers (analysis.json, per_image.npz, a report without figures) only.
    """
    from batchshaping.macs import MacCounter

    t0 = time.perf_counter()
    out = prepare_out(out)
    device = next(model.parameters()).device
    # channels_last as in training by default (faster convolutions on CPU)
    model.to(memory_format=memory_format(channels_last))
    loader = as_loader(data.test, batch_size, False, device, data.mean, data.std, channels_last=channels_last)
    shape = data.input_shape or tuple(next(iter(loader))[0].shape[1:])
    counter = MacCounter(model, shape)
    res = collect(model, loader, counter, task=data.task, autocast_dtype=autocast_dtype)
    t_pass = time.perf_counter() - t0

    names = _class_names(res, data.task)
    analysis = build_analysis(
        res, counter.dense, counter.gate_macs, names, model_name, data_name, source,
        precision=precision_name(autocast_dtype),
    )  # fmt: skip
    t1 = time.perf_counter()
    images = image_source(data.test, data.mean, data.std)
    analysis["plots"] = write_plots(res, analysis, images, out) if analysis["gated"] and make_plots else {}
    t_plots = time.perf_counter() - t1
    np.savez_compressed(out / "per_image.npz", **_per_image_arrays(res))
    analysis["timing_s"] = {
        "pass": round(t_pass, 3),
        "plots": round(t_plots, 3),
        "total": round(time.perf_counter() - t0, 3),
    }
    analysis = json_safe(analysis)
    (out / "analysis.json").write_text(json.dumps(analysis, indent=2) + "\n")
    (out / "report.md").write_text(render_report(analysis))
    return analysis


def _per_image_arrays(res: PassResult) -> dict[str, np.ndarray]:
    """per_image.npz's (N,) arrays: label, pred, loss, entropy, macs (classification); pixel_acc, loss,
    entropy, macs (segmentation)."""
    if res.segmentation:
        return {"pixel_acc": res.pixel_acc, "loss": res.loss, "entropy": res.entropy, "macs": res.macs}
    return {"label": res.label, "pred": res.pred, "loss": res.loss, "entropy": res.entropy, "macs": res.macs}


def _class_names(res: PassResult, task: ClassificationTask) -> list[str]:
    """One name per class. Segmentation: the task's (as its per-class IoU names them). Classification:
    K names, K the model's outputs or more if a label is larger: the task's if it has enough, else
    "class 0", "class 1", ..."""
    if isinstance(task, SegmentationTask):
        return task.class_names or [str(i) for i in range(task.num_classes)]
    num_classes = max(res.num_classes, int(res.label.max()) + 1)
    if task.class_names is not None and len(task.class_names) >= num_classes:
        return list(task.class_names)[:num_classes]
    return [f"class {i}" for i in range(num_classes)]
