"""Training and evaluation: one loop for dense and gated models, on CPU, CUDA and under torchrun.

    loss = CE + w_bs(t) * BatchShapingLoss(probs of all gates) + w_l0(t) * l0_loss(gate outputs)

with t in [0, 1] the training progress, w_bs decayed linearly to 0 at ``loss.bs_end`` and w_l0 ramped
from ``loss.l0_start`` to ``loss.l0_end`` (see :mod:`batchshaping.schedules`). :func:`fit` is the whole
loop and works on any dataset given as (x, y) tensors or as DataLoaders; :func:`train_cifar10` is what
``batchshaping train`` runs.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from batchshaping.checkpoint import FORMAT, atomic_save, git_commit, load_checkpoint, rng_state, set_rng_state
from batchshaping.config import TrainConfig, dump_config
from batchshaping.gates import ALWAYS_OFF, ALWAYS_ON, ChannelGate, GateOutput, gate_outputs
from batchshaping.losses import BatchShapingLoss, l0_loss
from batchshaping.macs import MacCounter
from batchshaping.models import GateConfig, create_model, model_info
from batchshaping.runtime import (
    autocast,
    init_distributed,
    machine_description,
    resolve_device,
    resolve_precision,
    seed_everything,
    shutdown_distributed,  # noqa: F401  (re-exported for the CLI until the run module lands)
)
from batchshaping.schedules import linear_decay, linear_ramp, step_lr


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is the last good state."""


# ----------------------------------------------------------------------------------------------- setup


def build_model(cfg: TrainConfig, num_classes: int | None = None) -> nn.Module:
    """The registry model named by ``cfg.model`` with ``cfg.gate`` options for gated models."""
    info = model_info(cfg.model)
    kwargs: dict[str, Any] = {}
    if info.gated:
        g = cfg.gate
        kwargs["gate"] = GateConfig(hidden=g.hidden, tau=g.tau, noise=g.noise, bias_init=g.bias_init)
    return create_model(cfg.model, num_classes=num_classes or cfg.num_classes, **kwargs)


def param_groups(model: nn.Module, weight_decay: float, decay_bn_and_gates: bool) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights; BN parameters, biases and gate parameters optionally exempt."""
    decay, no_decay = [], []
    gate_params = {id(p) for m in model.modules() if isinstance(m, ChannelGate) for p in m.parameters()}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or id(p) in gate_params
        (no_decay if exempt and not decay_bn_and_gates else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class EvalResult:
    """Metrics of one pass over a test set; per-image arrays when asked for.

    gate_on_rate: (total gates,) fraction of images for which each gate was open (empty for dense).
    """

    top1: float
    top5: float
    loss: float
    macs_mean: float
    macs_dense: float
    gate_on_rate: Tensor
    per_image: dict[str, Tensor] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat metrics for logs and summary.json (gate fractions are over all gates)."""
        rate = self.gate_on_rate
        n = max(rate.numel(), 1)
        on = float((rate > ALWAYS_ON).sum()) / n if rate.numel() else 1.0
        off = float((rate < ALWAYS_OFF).sum()) / n if rate.numel() else 0.0
        return {
            "top1": self.top1,
            "top5": self.top5,
            "test_loss": self.loss,
            "macs_mean": self.macs_mean,
            "macs_dense": self.macs_dense,
            "mac_ratio": self.macs_mean / self.macs_dense,
            "gates_always_on": on,
            "gates_always_off": off,
            "gates_conditional": 1.0 - on - off if rate.numel() else 0.0,
            "gate_on_rate_mean": float(rate.mean()) if rate.numel() else 1.0,
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    counter: MacCounter,
    autocast_dtype: torch.dtype | None = None,
    per_image: bool = False,
) -> EvalResult:
    """Top-1/top-5, mean loss, conditional MACs and per-gate on-rates of ``model`` (eval mode) on ``loader``.

    With ``per_image`` the result also holds (N,) tensors ``label``, ``pred``, ``loss``, ``entropy``,
    ``macs`` and the (N, total gates) ``mask`` (uint8), for analysis.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = correct1 = correct5 = 0
    loss_sum = macs_sum = 0.0
    on_counts: Tensor | None = None
    keep: dict[str, list[Tensor]] = {k: [] for k in ("label", "pred", "loss", "entropy", "macs", "mask")}
    for x, y in loader:
        with autocast(device, autocast_dtype):
            logits = model(x)
        logits = logits.float()
        losses = F.cross_entropy(logits, y, reduction="none")
        outs = gate_outputs(model)
        macs = counter.conditional(outs).expand(len(y))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(1).sum())
        n += len(y)
        loss_sum += float(losses.sum())
        macs_sum += float(macs.sum())
        if outs:
            mask = torch.cat([o.mask for o in outs], 1)
            on_counts = mask.sum(0) if on_counts is None else on_counts + mask.sum(0)
        if per_image:
            logp = logits.log_softmax(1)
            keep["label"].append(y.cpu())
            keep["pred"].append(top[:, 0].cpu())
            keep["loss"].append(losses.cpu())
            keep["entropy"].append(-(logp.exp() * logp).sum(1).cpu())
            keep["macs"].append(macs.cpu())
            if outs:
                keep["mask"].append(mask.to(torch.uint8).cpu())
    model.train(was_training)
    if n == 0:
        raise ValueError("the evaluation data is empty")
    rate = (on_counts / n).cpu() if on_counts is not None else torch.zeros(0)
    arrays = {k: torch.cat(v) for k, v in keep.items() if v} if per_image else {}
    return EvalResult(
        correct1 / n, correct5 / n, loss_sum / n, macs_sum / n, float(counter.dense), rate, arrays
    )


class Task:
    """What :func:`fit` optimises and reports; this default is image classification. A subclass (e.g.
    :class:`batchshaping.tasks.SegmentationTask`) swaps the loss, the training accuracy and the evaluation
    and keeps everything else of the loop (schedules, gate losses, checkpoints, DDP, logs)."""

    #: Evaluation metric (higher is better) that selects best.pt; the summary reports it as best_<metric>.
    metric = "top1"

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        #: Class names in index order, stored in checkpoints (evaluation then needs no training folder).
        self.class_names = class_names

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean task loss (0-d) of a batch: logits (N, K), y (N,)."""
        return F.cross_entropy(logits.float(), y)

    def correct(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-sample accuracies summed over the batch (0-d), for the logged train_acc."""
        return (logits.argmax(1) == y).float().sum()

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable[tuple[Tensor, Tensor]],
        counter: MacCounter,
        autocast_dtype: torch.dtype | None,
    ) -> dict[str, Any]:
        """Flat metrics of ``model`` on ``loader``; must contain :attr:`metric`."""
        return evaluate(model, loader, counter, autocast_dtype).metrics()


# -------------------------------------------------------------------------------------------- training


class _Logger:
    """JSONL + TensorBoard on rank 0; silent elsewhere."""

    def __init__(self, out_dir: Path | None, enabled: bool) -> None:
        self.path = out_dir / "log.jsonl" if out_dir and enabled else None
        self.tb = None
        if self.path is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                print("tensorboard is not installed: logging to log.jsonl only (pip install tensorboard)")

    def log(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def batch_shaping_input(outs: list[GateOutput], sync: bool) -> Tensor:
    """All gate probabilities of the batch as one (N, total gates) matrix; with ``sync`` (DDP) the
    matrix of the global batch, gathered with gradient so each rank's gates see every rank's samples."""
    probs = torch.cat([o.probs for o in outs], 1)
    if sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        probs = torch.cat(all_gather(probs), 0)
    return probs


def _mean_std(x: Tensor) -> tuple[list[float], list[float]]:
    xf = x.float() / (255.0 if x.dtype == torch.uint8 else 1.0)
    return xf.mean((0, 2, 3)).tolist(), xf.std((0, 2, 3)).tolist()


def fit(
    model: nn.Module,
    train_data: tuple[Tensor, Tensor] | Iterable[Any],
    test_data: tuple[Tensor, Tensor] | Iterable[Any],
    num_classes: int,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    task: Task | None = None,
) -> dict[str, Any]:
    """Train ``model`` with ``cfg``'s schedule, losses and logging; return the final summary.

    train_data / test_data: ``(x, y)`` tensors, x (N, C, H, W) uint8 (or float in [0, 1]) and y (N,)
    int64, kept on the device and augmented there (crop + flip) when ``cfg.data.augment``; or any
    iterables of ready (x, y) batches such as DataLoaders (then augmentation and normalisation are theirs,
    and under DDP they must shard, e.g. with a DistributedSampler). ``mean``/``std`` normalise tensor
    data (default: computed from the training images). ``out_dir`` receives config.yaml, log.jsonl,
    tb/, last.pt, best.pt and summary.json; ``resume`` continues from ``out_dir/last.pt``. ``task``:
    loss and evaluation (default :class:`Task`, classification).
    """
    from batchshaping.data import as_loader

    task = task or Task()

    dinfo = init_distributed()
    device = resolve_device(cfg.device, dinfo.local_rank)
    amp_dtype = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed + dinfo.rank, cfg.deterministic)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir) if out_dir is not None else None
    main = dinfo.is_main
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(f"output folder {str(out)!r} is not writable; pass another --out")
        (out / "config.yaml").write_text(dump_config(cfg))

    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    if isinstance(train_data, tuple | list) and mean is None:
        mean, std = _mean_std(torch.as_tensor(train_data[0]))

    def loader(data: Any, batch_size: int, train: bool, **tensor_kw: Any) -> Any:
        """(x, y) tensors -> TensorLoader with this run's seed and sharding; DataLoaders pass through."""
        if isinstance(data, tuple | list):
            tensor_kw.update(seed=cfg.seed)
        else:
            tensor_kw = {}
        kw = dict(mean=mean or [0.0], std=std or [1.0], channels_last=cfg.channels_last, **tensor_kw)
        return as_loader(data, batch_size, train, device, **kw)

    train_loader = loader(
        train_data,
        cfg.data.batch_size // dinfo.world_size,
        True,
        augment=cfg.data.augment,
        rank=dinfo.rank,
        world_size=dinfo.world_size,
    )
    test_loader = loader(test_data, cfg.data.eval_batch_size, False)
    if input_shape is None:
        x0, _ = next(iter(test_loader))
        input_shape = tuple(x0.shape[1:])
    counter = MacCounter(model, input_shape)
    gated = any(isinstance(m, ChannelGate) for m in model.modules())
    l0_weights = counter.gate_costs() if cfg.loss.l0_reduction == "macs" else None
    if l0_weights is not None:
        l0_weights = [w.to(device) for w in l0_weights]

    net: nn.Module = model
    if cfg.sync_bn and dinfo.world_size > 1:
        if device.type != "cuda":
            warnings.warn(
                "sync_bn needs CUDA (torch's SyncBatchNorm is GPU-only); ignored on CPU", stacklevel=2
            )
        else:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if dinfo.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)

    opt = torch.optim.SGD(
        param_groups(model, cfg.optim.weight_decay, cfg.optim.decay_bn_and_gates),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    bs_loss = BatchShapingLoss(cfg.loss.bs_alpha, cfg.loss.bs_beta, reduction=cfg.loss.bs_reduction)

    start_epoch, best_top1, metrics, wall_before = 0, -1.0, {}, 0.0
    if resume:
        if out is None or not (out / "last.pt").exists():
            raise FileNotFoundError(f"--resume: no last.pt in {str(out)!r}; nothing to resume")
        ckpt = load_checkpoint(out / "last.pt", map_location=device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt.get("scaler", {}))
        set_rng_state(ckpt["rng"])
        start_epoch, best_top1 = ckpt["epoch"], ckpt["best_top1"]
        metrics, wall_before = ckpt.get("metrics", {}), ckpt.get("wall_time_s", 0.0)
        if main:
            print(f"resumed from {out / 'last.pt'} after epoch {start_epoch}")

    logger = _Logger(out, main)
    steps = len(train_loader)
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_loader.set_epoch(epoch)
            net.train()
            stats = _train_epoch(
                net, model, train_loader, opt, scaler, bs_loss, l0_weights, counter, cfg, epoch, steps,
                amp_dtype, device, gated, main, task=task,
            )  # fmt: skip
            record: dict[str, Any] = {"epoch": epoch + 1, **stats}
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.eval_every == 0 or last:
                if main:
                    metrics = task.evaluate(model, test_loader, counter, amp_dtype)
                    record.update(metrics)
                if dinfo.world_size > 1:
                    dist.barrier()
            wall = wall_before + time.perf_counter() - t_start
            record["wall_time_s"] = wall
            logger.log(record)
            if main and metrics:
                _print_epoch(record, cfg.epochs, task.metric)
            if out is not None and main and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
                is_best = task.metric in record and record[task.metric] > best_top1
                best_top1 = max(best_top1, record.get(task.metric, best_top1))
                state = {
                    "format": FORMAT,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict(),
                    "config": cfg.to_dict(),
                    "num_classes": num_classes,
                    "class_names": list(task.class_names) if task.class_names is not None else None,
                    "epoch": epoch + 1,
                    "rng": rng_state(),
                    "best_top1": best_top1,
                    "metrics": metrics,
                    "wall_time_s": wall,
                    "git_commit": git_commit(),
                }
                atomic_save(state, out / "last.pt")
                if is_best:
                    atomic_save(state, out / "best.pt")
    finally:
        logger.close()

    summary = {
        "model": cfg.model,
        "config": cfg.name,
        "epochs": cfg.epochs,
        "wall_time_s": wall_before + time.perf_counter() - t_start,
        f"best_{task.metric}": best_top1,
        "device": str(device),
        "machine": machine_description(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "world_size": dinfo.world_size,
        **metrics,
    }
    if out is not None and main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train_epoch(
    net: nn.Module,
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    bs_loss: BatchShapingLoss,
    l0_weights: list[Tensor] | None,
    counter: MacCounter,
    cfg: TrainConfig,
    epoch: int,
    steps: int,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    gated: bool,
    main: bool,
    task: Task | None = None,
) -> dict[str, float]:
    """One epoch. Statistics stay on the device and are read every few steps (no per-step host sync)."""
    lc, oc = cfg.loss, cfg.optim
    task = task or Task()
    sums = torch.zeros(7, device=device)  # loss, ce, bs, l0, correct, open fraction, mac ratio
    seen = 0
    bar = None
    if main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
    for i, (x, y) in enumerate(loader):
        t = (epoch + i / steps) / cfg.epochs
        lr = step_lr(t, oc.lr, oc.lr_milestones, oc.lr_gamma, oc.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        w_bs = linear_decay(t, lc.bs_weight, lc.bs_end)
        w_l0 = linear_ramp(t, lc.l0_weight, lc.l0_start, lc.l0_end)
        with autocast(device, amp_dtype):
            logits = net(x)
        ce = task.loss(logits, y)
        loss, bs, l0 = ce, ce.new_zeros(()), ce.new_zeros(())
        open_frac, mac_ratio = ce.new_ones(()), ce.new_ones(())
        if gated:
            outs = gate_outputs(model)
            if w_bs > 0:
                bs = bs_loss(batch_shaping_input(outs, lc.bs_sync))
                loss = loss + w_bs * bs
            if w_l0 > 0:
                l0 = l0_loss(
                    outs, reduction="mean" if l0_weights is not None else lc.l0_reduction, weights=l0_weights
                )
                loss = loss + w_l0 * l0
            with torch.no_grad():
                open_frac = torch.cat([o.mask for o in outs], 1).mean()
                mac_ratio = counter.conditional(outs).mean() / counter.dense
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            correct = task.correct(logits, y)
            b = len(y)
            sums += torch.stack(
                [loss * b, ce * b, bs * b, l0 * b, correct, open_frac * b, mac_ratio * b]
            ).detach()
        seen += b
        if (i + 1) % 20 == 0 or i + 1 == steps:
            s = (sums / seen).tolist()
            if not math.isfinite(s[0]):
                raise TrainingDiverged(
                    f"loss is {s[0]} in epoch {epoch + 1}, step {i + 1}; the run stopped and the last good "
                    "checkpoint (last.pt) is kept. Lower optim.lr or the loss weights and --resume or rerun."
                )
            if bar is not None:
                bar.set_postfix(
                    loss=f"{s[0]:.3f}", ce=f"{s[1]:.3f}", bs=f"{s[2]:.4f}", l0=f"{s[3]:.3f}",
                    acc=f"{s[4]:.3f}", open=f"{s[5]:.3f}", macs=f"{s[6]:.3f}",
                )  # fmt: skip
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    s = (sums / max(seen, 1)).tolist()
    keys = ("train_loss", "train_ce", "train_bs", "train_l0", "train_acc", "train_open", "train_mac_ratio")
    return {**dict(zip(keys, s, strict=True)), "lr": lr, "w_bs": w_bs, "w_l0": w_l0}


def _print_epoch(r: dict[str, Any], epochs: int, metric: str = "top1") -> None:
    print(
        f"epoch {r['epoch']}/{epochs}  loss {r['train_loss']:.3f}  train acc {r['train_acc']:.3f}  "
        f"{metric} {r[metric]:.4f}  MACs {r['macs_mean'] / 1e6:.2f}M ({r['mac_ratio']:.3f} of dense)  "
        f"gates on/off/cond {r['gates_always_on']:.2f}/{r['gates_always_off']:.2f}/"
        f"{r['gates_conditional']:.2f}  "
        f"{r['wall_time_s']:.0f}s",
        flush=True,
    )


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable end-of-run summary."""
    lines = [
        f"model {s['model']} ({s['config']}), {s['epochs']} epochs, {s['wall_time_s']:.0f} s on "
        f"{s['device']} ({s['precision']})",
        f"top-1 {100 * s['top1']:.2f}%  (best {100 * s['best_top1']:.2f}%)",
        f"MACs {s['macs_mean'] / 1e6:.2f}M per image, {s['mac_ratio']:.3f} of the dense "
        f"{s['macs_dense'] / 1e6:.2f}M",
        f"gates: {100 * s['gates_always_on']:.1f}% always on, {100 * s['gates_always_off']:.1f}% always off, "
        f"{100 * s['gates_conditional']:.1f}% conditional (mean on-rate {s['gate_on_rate_mean']:.3f})",
    ]
    return "\n".join(lines)


def train_cifar10(
    cfg: TrainConfig, data_dir: str | None = None, out_dir: str | Path | None = None, resume: bool = False
) -> dict[str, Any]:
    """``batchshaping train``: CIFAR-10 from ``data_dir`` (then cfg.data.root, $BATCHSHAPING_DATA,
    ./data/cifar10) with the model and recipe of ``cfg``."""
    from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10, resolve_data_dir

    data = load_cifar10(resolve_data_dir(data_dir or cfg.data.root), download=cfg.data.download)
    model = build_model(cfg, cfg.num_classes or 10)
    ntr, nte = cfg.data.train_subset, cfg.data.test_subset
    return fit(
        model,
        (data.x_train[:ntr], data.y_train[:ntr]),
        (data.x_test[:nte], data.y_test[:nte]),
        10,
        cfg,
        out_dir,
        resume,
        mean=list(CIFAR10_MEAN),
        std=list(CIFAR10_STD),
        input_shape=(3, 32, 32),
    )
