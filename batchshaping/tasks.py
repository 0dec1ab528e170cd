"""ImageNet classification and Cityscapes segmentation through the one training loop, ``train.fit``.

``batchshaping train --config configs/imagenet_gated_resnet50.yaml --data-dir /data/imagenet`` (and the
same under ``torchrun``) lands in :func:`run_dataset_training`: it builds the datasets, DataLoaders with
worker processes and a DistributedSampler (one shard per rank), the model (optionally warm-started from a
torchvision-named ResNet ``.pth`` with :func:`load_pretrained`) and the :class:`~batchshaping.train.Task`,
then calls ``fit``, which keeps the schedules, the batch-shaping / L0 losses, checkpoints, resume and logs.

Segmentation is a :class:`SegmentationTask`: per-pixel cross-entropy with ignore index 255 instead of
the image-level one, mIoU (confusion-matrix based) as the metric that selects best.pt, and conditional MACs
per image at the evaluation resolution.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchshaping.checkpoint import CheckpointError
from batchshaping.config import ConfigError, TrainConfig
from batchshaping.gates import gate_outputs
from batchshaping.macs import MacCounter
from batchshaping.models import model_info
from batchshaping.runtime import autocast, init_distributed
from batchshaping.train import EvalResult, Task, build_model, fit

# ------------------------------------------------------------------------------------------- metrics


def topk_accuracy(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Fraction of samples whose target is among the k highest logits, for each k in ``ks``.

    logits: (N, K); target: (N,) class indices. k > K counts every sample as correct.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, K) and target (N,), got {tuple(logits.shape)}, {tuple(target.shape)}"
        )
    kmax = min(max(ks), logits.shape[1])
    hit = logits.topk(kmax, dim=1).indices == target[:, None]  # (N, kmax), at most one True per row
    return [float(hit[:, : min(k, kmax)].any(1).float().mean()) for k in ks]


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


# ---------------------------------------------------------------------------------------- segmentation


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    counter: MacCounter,
    autocast_dtype: torch.dtype | None = None,
    num_classes: int = 19,
    ignore_index: int = 255,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """mIoU, pixel accuracy, per-pixel loss, conditional MACs and gate statistics of ``model`` (eval mode).

    loader: batches x (N, 3, h, w), y (N, H, W) integer labels. Logits (N, K, h, w) are upsampled
    bilinearly to (H, W) when the label is larger, so scores are at the label's resolution. MACs are
    ``counter``'s, i.e. per image at the resolution it was built for.
    """
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    n = pixels = 0
    loss_sum = macs_sum = 0.0
    on_counts: Tensor | None = None
    device = next(model.parameters()).device
    for x, y in loader:
        with autocast(device, autocast_dtype):
            logits = model(x)
        logits, y = logits.float(), y.long()
        if logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, y.shape[-2:], mode="bilinear", align_corners=False)
        loss_sum += float(F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum"))
        pixels += int((y != ignore_index).sum())
        cm += confusion_matrix(logits.argmax(1), y, num_classes, ignore_index).cpu()
        outs = gate_outputs(model)
        macs_sum += float(counter.conditional(outs).expand(len(y)).sum())
        if outs:
            mask = torch.cat([o.mask for o in outs], 1).sum(0)
            on_counts = mask if on_counts is None else on_counts + mask
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise ValueError("the evaluation data is empty")
    rate = (on_counts / n).cpu() if on_counts is not None else torch.zeros(0)
    # EvalResult supplies the gate and MAC fields; its image-level top-1/top-5 do not apply here.
    metrics: dict[str, Any] = EvalResult(
        0.0, 0.0, loss_sum / max(pixels, 1), macs_sum / n, float(counter.dense), rate
    ).metrics()
    del metrics["top1"], metrics["top5"]
    iou = class_iou(cm)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    metrics.update(
        miou=mean_iou(cm),
        pixel_acc=float(cm.diag().sum() / cm.sum().clamp(min=1)),
        class_iou={c: (None if v != v else float(v)) for c, v in zip(names, iou.tolist(), strict=True)},
    )
    return metrics


class SegmentationTask(Task):
    """Per-pixel classification: logits (N, K, H, W), labels (N, H, W) with ``ignore_index`` pixels."""

    metric = "miou"

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None
    ) -> None:
        self.num_classes, self.ignore_index, self.class_names = num_classes, ignore_index, class_names

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

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[tuple[Tensor, Tensor]],
        counter: MacCounter,
        autocast_dtype: torch.dtype | None,
    ) -> dict[str, Any]:
        return evaluate_segmentation(
            model, loader, counter, autocast_dtype, self.num_classes, self.ignore_index, self.class_names
        )


# ---------------------------------------------------------------------------------------- warm start


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a torchvision-named ResNet state_dict (``.pth``) into ``model``, or into ``model.backbone``
    for a segmentation model, with ``strict=False``.

    Allowed differences, reported in the returned {"missing": [...], "skipped": [...]}: missing gate
    parameters (``*.gate.*``) and BN ``num_batches_tracked``; a classifier ``fc.*`` that the target lacks
    (segmentation) or whose shape differs (other number of classes; it keeps its initialisation). Anything
    else -- a missing weight, an unexpected key, a shape mismatch -- raises CheckpointError naming it.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"pretrained weights {str(p)!r} not found (config key 'pretrained')")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read pretrained weights {str(p)!r} as a plain state_dict ({type(e).__name__}: {e}); "
            "for a batchshaping checkpoint, save its 'model' entry with torch.save first"
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"pretrained weights {str(p)!r} are not a state_dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    target = model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model
    own = target.state_dict()
    skipped = [k for k in state if k.startswith("fc.") and (k not in own or own[k].shape != state[k].shape)]
    state = {k: v for k, v in state.items() if k not in skipped}
    bad_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad_shape:
        raise CheckpointError(
            f"pretrained weights {str(p)!r} do not fit the model: {'; '.join(bad_shape[:5])}"
        )
    missing, unexpected = target.load_state_dict(state, strict=False)
    allowed = tuple(skipped)
    bad_missing = [
        k for k in missing if ".gate." not in k and not k.endswith("num_batches_tracked") and k not in allowed
    ]
    if unexpected or bad_missing:
        raise CheckpointError(
            f"pretrained weights {str(p)!r} do not match the {type(target).__name__} of the model: "
            f"unexpected keys {list(unexpected)[:5]} ({len(unexpected)}), missing non-gate keys "
            f"{bad_missing[:5]} ({len(bad_missing)}); expected torchvision ResNet names (conv1.weight, "
            "layer1.0.conv1.weight, ...) of the same depth"
        )
    return {"missing": list(missing), "skipped": skipped}


# ------------------------------------------------------------------------------------------- loaders


def build_loaders(
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    cfg: TrainConfig,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """DataLoaders with ``cfg.data.workers`` decoding processes.

    Training: a DistributedSampler (shuffled from ``cfg.seed``, reshuffled by ``set_epoch``, every rank its
    own shard; also with one process) and ``batch_size // world_size`` images per rank, last partial batch
    dropped. Evaluation: the whole val set in order (``fit`` evaluates on rank 0 only).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    per_rank = cfg.data.batch_size // world_size
    if per_rank < 1:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} is smaller than the {world_size} processes")
    sampler = DistributedSampler(
        train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    workers = cfg.data.workers
    kw: dict[str, Any] = dict(
        num_workers=workers,
        pin_memory=torch.cuda.is_available() and cfg.device != "cpu",
        persistent_workers=workers > 0,
    )
    train = DataLoader(train_set, per_rank, sampler=sampler, drop_last=True, **kw)
    if len(train) == 0:
        from batchshaping.data import DataError

        raise DataError(
            f"{len(train_set)} training images give no full batch of {per_rank} per process; "
            "lower data.batch_size"
        )
    val = DataLoader(val_set, cfg.data.eval_batch_size, shuffle=False, drop_last=False, **kw)
    return train, val


def _subset(ds: torch.utils.data.Dataset, n: int | None) -> torch.utils.data.Dataset:
    if n is None or n >= len(ds):  # type: ignore[arg-type]
        return ds
    return torch.utils.data.Subset(ds, range(n))


# ------------------------------------------------------------------------------------------ entry point


class DatasetSetup(NamedTuple):
    """What training and evaluation need to know about an ImageNet or Cityscapes folder."""

    train_set: torch.utils.data.Dataset | None  # None when only evaluating (see dataset_setup)
    val_set: torch.utils.data.Dataset
    num_classes: int
    input_shape: tuple[int, int, int]  # (3, H, W) at which MACs are counted
    task: Task


def dataset_setup(
    cfg: TrainConfig, data_dir: str | None = None, class_names: list[str] | None = None
) -> DatasetSetup:
    """Datasets, classes, MAC input shape and task for ``data.dataset`` imagenet or cityscapes.

    Data folder: ``data_dir``, else ``cfg.data.root``, else $BATCHSHAPING_DATA. ImageNet: classes from
    ``train/``, MACs at 3 x image_size x image_size; given ``class_names`` (a checkpoint's), only the
    validation set is built and ``train/`` is not read (train_set None). Cityscapes: 19 classes, training
    crops of image_size, evaluation and MACs at ``data.eval_size`` (default: the images' own size).
    """
    from batchshaping.data import DataNotFoundError
    from batchshaping.data.cityscapes import CITYSCAPES_CLASSES, IGNORE_INDEX, cityscapes_datasets
    from batchshaping.data.imagenet import imagenet_datasets, imagenet_val_dataset

    dataset = cfg.data.dataset
    if cfg.data.download:
        raise ConfigError(f"--download / data.download only fetch CIFAR-10; get {dataset} from its website")
    root = data_dir or cfg.data.root or os.environ.get("BATCHSHAPING_DATA")
    if not root:
        raise DataNotFoundError(f"no {dataset} folder given: pass --data-dir or set data.root")
    family = model_info(cfg.model).family
    if (family == "segmentation") != (dataset == "cityscapes"):
        raise ConfigError(
            f"model {cfg.model!r} ({family}) does not fit data.dataset {dataset!r}: "
            "cityscapes needs a segmentation model (gated_pspnet50, pspnet50), imagenet a classifier"
        )
    if dataset == "imagenet":
        size = cfg.data.image_size
        if class_names is not None:
            val_set = imagenet_val_dataset(root, class_names, size)
            return DatasetSetup(None, val_set, len(class_names), (3, size, size), Task(class_names))
        train_set, val_set = imagenet_datasets(root, size, cfg.data.augment)
        num_classes = cfg.num_classes or len(train_set.classes)
        if num_classes != len(train_set.classes):
            raise ConfigError(f"num_classes {num_classes} but {root!r} has {len(train_set.classes)} classes")
        return DatasetSetup(train_set, val_set, num_classes, (3, size, size), Task(train_set.classes))
    eval_size = cfg.data.eval_size
    if eval_size is not None and (len(eval_size) != 2 or min(eval_size) < 1):
        raise ConfigError(f"config key 'data.eval_size' is [height, width], got {eval_size}")
    num_classes = len(CITYSCAPES_CLASSES)
    if cfg.num_classes not in (None, num_classes):
        raise ConfigError(f"Cityscapes has {num_classes} classes; num_classes is {cfg.num_classes}")
    ev = tuple(eval_size) if eval_size is not None else None
    train_set, val_set = cityscapes_datasets(root, cfg.data.image_size, ev, cfg.data.augment)
    task = SegmentationTask(num_classes, IGNORE_INDEX, CITYSCAPES_CLASSES)
    return DatasetSetup(train_set, val_set, num_classes, (3, *(ev or val_set.image_size())), task)


def run_dataset_training(
    cfg: TrainConfig, data_dir: str | None = None, out_dir: str | Path | None = None, resume: bool = False
) -> dict[str, Any]:
    """``batchshaping train`` for ``data.dataset`` imagenet or cityscapes (see :func:`dataset_setup`);
    returns fit's summary."""
    from batchshaping.data.image_transforms import IMAGENET_MEAN, IMAGENET_STD

    train_set, val_set, num_classes, input_shape, task = dataset_setup(cfg, data_dir)
    dinfo = init_distributed()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, num_classes)
    if cfg.pretrained and not resume:  # on resume last.pt holds the weights
        report = load_pretrained(model, cfg.pretrained)
        if dinfo.is_main:
            gates = sum(".gate." in k for k in report["missing"])
            skipped = f"; not loaded: {', '.join(report['skipped'])}" if report["skipped"] else ""
            print(f"warm start from {cfg.pretrained}: {gates} gate tensors at their initialisation{skipped}")
    train_loader, val_loader = build_loaders(
        _subset(train_set, cfg.data.train_subset),
        _subset(val_set, cfg.data.test_subset),
        cfg,
        dinfo.rank,
        dinfo.world_size,
    )
    return fit(
        model, train_loader, val_loader, num_classes, cfg, out_dir, resume,
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), input_shape=input_shape, task=task,
    )  # fmt: skip


def format_task_summary(s: dict[str, Any]) -> str:
    """Human-readable end-of-run summary for classification (top-1/top-5) or segmentation (mIoU)."""
    if "macs_mean" not in s:  # a DDP rank other than 0: rank 0 evaluates and reports
        return f"rank finished {s['epochs']} epochs of {s['model']} (metrics are reported by rank 0)"
    if "miou" in s:
        head = f"mIoU {100 * s['miou']:.2f}%  (best {100 * s['best_miou']:.2f}%)"
        head += f", pixel accuracy {100 * s['pixel_acc']:.2f}%"
    else:
        head = (
            f"top-1 {100 * s['top1']:.2f}%  (best {100 * s['best_top1']:.2f}%), top-5 {100 * s['top5']:.2f}%"
        )
    on, off, cond = s["gates_always_on"], s["gates_always_off"], s["gates_conditional"]
    return "\n".join(
        [
            f"model {s['model']} ({s['config']}), {s['epochs']} epochs, {s['wall_time_s']:.0f} s on "
            f"{s['device']} ({s['precision']}, {s['world_size']} process(es))",
            head,
            f"MACs {s['macs_mean'] / 1e9:.3f}G per image, {s['mac_ratio']:.3f} of the dense "
            f"{s['macs_dense'] / 1e9:.3f}G",
            f"gates: {100 * on:.1f}% always on, {100 * off:.1f}% always off, {100 * cond:.1f}% conditional "
            f"(mean on-rate {s['gate_on_rate_mean']:.3f})",
        ]
    )


def evaluate_dataset(
    model: nn.Module,
    cfg: TrainConfig,
    data_dir: str | None = None,
    batch_size: int | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """``batchshaping eval`` for imagenet or cityscapes: ``cfg``'s task metrics of ``model`` on the whole
    validation set (top-1/top-5 or mIoU, conditional MACs, gate statistics). ``class_names``: the
    checkpoint's ImageNet classes, so that only ``val/`` is read (older checkpoints: None, ``train/``)."""
    from batchshaping.data import DeviceLoader
    from batchshaping.runtime import resolve_precision

    setup = dataset_setup(cfg, data_dir, class_names)
    device = next(model.parameters()).device
    loader = DeviceLoader(
        torch.utils.data.DataLoader(
            setup.val_set, batch_size or cfg.data.eval_batch_size, num_workers=cfg.data.workers
        ),
        device,
    )
    counter = MacCounter(model, setup.input_shape)
    return setup.task.evaluate(model, loader, counter, resolve_precision(cfg.precision, device))
