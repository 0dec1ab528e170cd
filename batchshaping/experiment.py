"""The one run path: config -> data, model and task -> :func:`batchshaping.train.fit` -> summary.

``batchshaping train`` and ``eval`` go through here for every data set; only :func:`load_data` knows the
data sets apart (CIFAR-10 as tensors that live on the device, ImageNet and Cityscapes as DataLoaders with
worker processes). A run folder is self-contained: its config.yaml and last.pt record the model, the recipe
and the data folder, so ``--resume`` needs only ``--out``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from batchshaping.checkpoint import load_checkpoint, load_pretrained, model_from_checkpoint
from batchshaping.config import ConfigError, TrainConfig, config_from_dict, parse_overrides, update_config
from batchshaping.data import Data
from batchshaping.models import model_from_config, model_info
from batchshaping.runtime import init_distributed, memory_format, resolve_device, resolve_precision
from batchshaping.tasks import ClassificationTask, SegmentationTask

if TYPE_CHECKING:
    from batchshaping.evaluation import Observer

#: Keys that a resumed run may take from the command line: where and how it runs, not what it computes.
RESUME_OVERRIDABLE = {
    "data.root",
    "data.workers",
    "device",
    "threads",
    "progress",
    "data.eval_batch_size",
    "step",
    "max_time",
}


def normalization(dataset: str) -> tuple[list[float], list[float]]:
    """Per-channel (RGB) mean and std, of images in [0, 1], that data set ``dataset`` is normalised with."""
    if dataset == "cifar10":
        from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD

        return list(CIFAR10_MEAN), list(CIFAR10_STD)
    from batchshaping.data.image_transforms import IMAGENET_MEAN, IMAGENET_STD

    return list(IMAGENET_MEAN), list(IMAGENET_STD)  # also Cityscapes': its backbones start from ImageNet


def load_data(
    cfg: TrainConfig, data_dir: str | None = None, *, train: bool = True, class_names: list[str] | None = None
) -> Data:
    """The data set of ``cfg.data.dataset`` from ``data_dir``, else ``cfg.data.root``, else
    $BATCHSHAPING_DATA (else ./data/cifar10 for CIFAR-10). ``train=False`` skips the training split where the
    data set allows it (CIFAR-10 reads only its test files); ``class_names`` (a checkpoint's ImageNet classes)
    avoid reading ``train/``."""
    family = model_info(cfg.model).family
    if (family == "segmentation") != (cfg.data.dataset == "cityscapes"):
        raise ConfigError(
            f"model {cfg.model!r} ({family}) does not fit data.dataset {cfg.data.dataset!r}: "
            "cityscapes needs a segmentation model (gated_pspnet50, pspnet50), cifar10/imagenet a classifier"
        )
    if cfg.data.dataset == "cifar10":
        return _cifar10(cfg, data_dir, train)
    if cfg.data.download:
        raise ConfigError(f"--download only fetches CIFAR-10; get {cfg.data.dataset} from its website")
    root = data_dir or cfg.data.root or os.environ.get("BATCHSHAPING_DATA")
    if not root:
        from batchshaping.data import DataNotFoundError

        raise DataNotFoundError(f"no {cfg.data.dataset} folder given: pass --data-dir or set data.root")
    if cfg.data.dataset == "imagenet":
        return _imagenet(cfg, Path(root), train, class_names)
    return _cityscapes(cfg, Path(root), train)


def _cifar10(cfg: TrainConfig, data_dir: str | None, train: bool = True) -> Data:
    from batchshaping.data import CIFAR10_CLASSES, load_cifar10, resolve_data_dir

    if cfg.num_classes not in (None, 10):
        raise ConfigError(f"CIFAR-10 has 10 classes; num_classes is {cfg.num_classes} (leave it unset)")
    root = resolve_data_dir(data_dir or cfg.data.root)
    d = load_cifar10(root, download=cfg.data.download, train=train)
    ntr, nte = cfg.data.train_subset, cfg.data.test_subset
    return Data(
        (d.x_train[:ntr], d.y_train[:ntr]) if train else None,
        (d.x_test[:nte], d.y_test[:nte]),
        10,
        (3, 32, 32),
        *normalization("cifar10"),
        ClassificationTask(CIFAR10_CLASSES),
        Path(root),
    )


def _imagenet(cfg: TrainConfig, root: Path, train: bool, class_names: list[str] | None) -> Data:
    from batchshaping.data.imagenet import imagenet_datasets, imagenet_val_dataset

    size = cfg.data.image_size
    if class_names is not None and not train:
        val_set, train_set = imagenet_val_dataset(root, class_names, size), None
    else:
        train_set, val_set = imagenet_datasets(root, size, cfg.data.augment)
        class_names = list(train_set.classes)
    if cfg.num_classes not in (None, len(class_names)):
        raise ConfigError(
            f"num_classes is {cfg.num_classes} but {str(root)!r} has {len(class_names)} classes"
        )
    train_loader, val_loader = _dataloaders(cfg, train_set, val_set)
    task = ClassificationTask(class_names)
    mean, std = normalization("imagenet")
    return Data(train_loader, val_loader, len(class_names), (3, size, size), mean, std, task, root)


def _cityscapes(cfg: TrainConfig, root: Path, train: bool) -> Data:
    from batchshaping.data.cityscapes import CITYSCAPES_CLASSES, IGNORE_INDEX, cityscapes_datasets

    eval_size = cfg.data.eval_size
    if eval_size is not None and (len(eval_size) != 2 or min(eval_size) < 1):
        raise ConfigError(f"config key 'data.eval_size' is [height, width], got {eval_size}")
    k = len(CITYSCAPES_CLASSES)
    if cfg.num_classes not in (None, k):
        raise ConfigError(f"Cityscapes has {k} classes; num_classes is {cfg.num_classes}")
    ev = tuple(eval_size) if eval_size is not None else None
    train_set, val_set = cityscapes_datasets(root, cfg.data.image_size, ev, cfg.data.augment)
    train_loader, val_loader = _dataloaders(cfg, train_set if train else None, val_set)
    task = SegmentationTask(k, IGNORE_INDEX, CITYSCAPES_CLASSES)
    shape = (3, *(ev or val_set.image_size()))
    return Data(train_loader, val_loader, k, shape, *normalization("cityscapes"), task, root)


def _dataloaders(cfg: TrainConfig, train_set: Any, val_set: Any) -> tuple[Any, Any]:
    """DataLoaders (one shard per torchrun rank) of the first data.train_subset / test_subset images."""
    from batchshaping.data import build_loaders

    def subset(ds: Any, n: int | None) -> Any:
        return ds if n is None or n >= len(ds) else torch.utils.data.Subset(ds, range(n))

    val_set = subset(val_set, cfg.data.test_subset)
    if train_set is None:
        return None, torch.utils.data.DataLoader(
            val_set, cfg.data.eval_batch_size, num_workers=cfg.data.workers
        )
    dist_info = init_distributed()
    return build_loaders(
        subset(train_set, cfg.data.train_subset),
        val_set,
        cfg.data.batch_size,
        cfg.data.eval_batch_size,
        cfg.data.workers,
        cfg.seed,
        dist_info.rank,
        dist_info.world_size,
        pin_memory=torch.cuda.is_available() and cfg.device != "cpu",
    )


# ------------------------------------------------------------------------------------------- commands


def train(
    cfg: TrainConfig, out_dir: str | Path, data_dir: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """``batchshaping train``: data, model (seeded from ``cfg.seed``; warm-started from ``cfg.pretrained``
    on a new run), then :func:`~batchshaping.train.fit`. The data folder is recorded in the run's config."""
    from batchshaping.train import finished_run, fit

    if resume and (done := finished_run(out_dir)) is not None:  # before loading any data
        return done
    data = load_data(cfg, data_dir)
    cfg.data.root = str(data.root.resolve())
    torch.manual_seed(cfg.seed)  # the same initial weights for a seed, on every rank
    model = model_from_config(cfg, data.num_classes)
    if cfg.pretrained and not resume:  # on resume last.pt holds the weights
        report = load_pretrained(model, cfg.pretrained)
        if init_distributed().is_main:
            gates = sum(".gate." in k for k in report["missing"])
            print(f"warm start from {cfg.pretrained}: every weight loaded, {gates} gate tensors initialised")
    return fit(model, data, cfg, out_dir, resume)


def resume_config(out_dir: str | Path, overrides: list[str]) -> TrainConfig:
    """The config of the run in ``out_dir`` (from its last.pt), for ``--resume``. Overrides may only change
    where and how the run executes (:data:`RESUME_OVERRIDABLE`); anything else would change the run and is
    refused."""
    from batchshaping.train import resumable

    cfg = config_from_dict(load_checkpoint(resumable(out_dir))["config"])
    changes = parse_overrides(overrides)
    flat = _flatten(changes)
    refused = sorted(k for k in flat if k not in RESUME_OVERRIDABLE)
    if refused:
        raise ConfigError(
            f"--resume continues the run in {str(out_dir)!r} with its own config; {', '.join(refused)} would "
            f"change it. Start a new run (another --out, or pretrained={out_dir}/last.pt) to change them"
        )
    return update_config(cfg, changes)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def evaluate_checkpoint(
    path: str | Path,
    data_dir: str | None = None,
    batch_size: int | None = None,
    download: bool = False,
    max_images: int | None = None,
    observe: Observer | None = None,
) -> dict[str, Any]:
    """``batchshaping eval``: the task metrics, conditional MACs and gate statistics of a checkpoint on its
    data set's test split (found as in training: ``data_dir``, else the folder the run was trained on), or
    on its first ``max_images`` images. ``observe`` sees every batch, as in
    :func:`~batchshaping.evaluation.evaluate`."""
    from batchshaping.data import as_loader
    from batchshaping.evaluation import evaluate
    from batchshaping.macs import MacCounter

    device = resolve_device("auto")
    ckpt = load_checkpoint(path)
    model, cfg = model_from_checkpoint(ckpt, device)
    cfg.data.download = download
    cfg.data.train_subset, cfg.data.test_subset = None, max_images  # None: the whole test split
    if batch_size is not None:
        cfg.data.eval_batch_size = batch_size
    data = load_data(cfg, data_dir, train=False, class_names=ckpt.get("class_names"))
    # the layout and precision of the run's own evaluations, so that eval reproduces their numbers
    model.to(memory_format=memory_format(cfg.channels_last))
    batch = cfg.data.eval_batch_size
    loader = as_loader(data.test, batch, False, device, data.mean, data.std, channels_last=cfg.channels_last)
    counter = MacCounter(model, data.input_shape)
    return evaluate(model, loader, counter, data.task, resolve_precision(cfg.precision, device), observe)


def summary_text(s: dict[str, Any]) -> str:
    """Human-readable end-of-run summary for classification (top-1/top-5) or segmentation (mIoU)."""
    if "macs_mean" not in s:  # a DDP rank other than 0: rank 0 evaluates and reports
        return f"rank finished {s['epochs']} epochs of {s['model']} (metrics are reported by rank 0)"
    if "miou" in s:
        head = f"mIoU {100 * s['miou']:.2f}% (best {100 * s['best_miou']:.2f}%)"
        head += f", pixel accuracy {100 * s['pixel_acc']:.2f}%"
    else:
        head = (
            f"top-1 {100 * s['top1']:.2f}% (best {100 * s['best_top1']:.2f}%), top-5 {100 * s['top5']:.2f}%"
        )
    on, off, cond = s["gates_always_on"], s["gates_always_off"], s["gates_conditional"]
    return "\n".join(
        [
            f"model {s['model']} ({s['config']}), {s['epochs']} epochs, {s['wall_time_s']:.0f} s on "
            f"{s['device']} ({s['precision']}, {s['world_size']} process(es))",
            head,
            f"MACs {s['macs_mean'] / 1e6:.2f}M per image, {s['mac_ratio']:.3f} of the dense "
            f"{s['macs_dense'] / 1e6:.2f}M",
            f"gates: {100 * on:.1f}% always on, {100 * off:.1f}% always off, {100 * cond:.1f}% conditional "
            f"(mean on-rate {s['gate_on_rate_mean']:.3f})",
        ]
    )
