"""One optimisation step of every training path: :class:`TrainStep`, the loss-weight and learning-rate
:func:`schedule`, the SGD optimizer with its weight-decay groups, and the statistics a step reports.

:mod:`batchshaping.train` runs it eagerly; :mod:`batchshaping.fast_step` runs the same pieces compiled or
captured in a CUDA graph.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from batchshaping.config import TrainConfig
from batchshaping.gates import ChannelGate, GateOutput, gate_outputs
from batchshaping.losses import BatchShapingLoss, l0_loss, mac_target_loss
from batchshaping.macs import MacCounter
from batchshaping.runtime import autocast
from batchshaping.schedules import linear_decay, linear_ramp, step_lr
from batchshaping.tasks import ClassificationTask

#: The per-step statistics of :class:`TrainStep`, averaged over an epoch into the log.
STATS = (
    "train_loss",
    "train_ce",
    "train_bs",
    "train_l0",
    "train_macs",
    "train_acc",
    "train_open",
    "train_mac_ratio",
)


def param_groups(
    model: nn.Module, weight_decay: float, decay_bn_and_gates: bool, backbone_lr_factor: float = 1.0
) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights; BN parameters, biases and gate parameters optionally exempt.

    Each group's ``lr_factor`` scales the scheduled learning rate. With ``backbone_lr_factor`` != 1 the
    gate parameters get a group of their own (factor 1) and every other group the backbone's factor.
    """
    gate_params = {id(p) for m in model.modules() if isinstance(m, ChannelGate) for p in m.parameters()}
    split = backbone_lr_factor != 1.0
    decay, no_decay, gates = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if split and id(p) in gate_params:
            gates.append(p)
            continue
        exempt = p.ndim <= 1 or id(p) in gate_params
        (no_decay if exempt and not decay_bn_and_gates else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_factor": backbone_lr_factor},
        {"params": no_decay, "weight_decay": 0.0, "lr_factor": backbone_lr_factor},
    ]
    gate_decay = weight_decay if decay_bn_and_gates else 0.0
    return groups + ([{"params": gates, "weight_decay": gate_decay, "lr_factor": 1.0}] if split else [])


def batch_shaping_input(outs: list[GateOutput], sync: bool) -> Tensor:
    """All gate probabilities of the batch as one (N, total gates) matrix; with ``sync`` (DDP) the
    matrix of the global batch, gathered with gradient so each rank's gates see every rank's samples."""
    probs = torch.cat([o.probs for o in outs], 1)
    if sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        probs = torch.cat(all_gather(probs), 0)
    return probs


def schedule(cfg: TrainConfig, t: float) -> tuple[float, float, float, float]:
    """(learning rate, batch-shaping weight, L0 weight, MAC-target weight) at training progress ``t`` in
    [0, 1]. The MAC-target weight is 0 without ``loss.macs_target``."""
    oc, lc = cfg.optim, cfg.loss
    w_macs = lc.macs_weight if lc.macs_target is not None else 0.0
    return (
        step_lr(t, oc.lr, oc.lr_milestones, oc.lr_gamma, oc.warmup),
        linear_decay(t, lc.bs_weight, lc.bs_end),
        linear_ramp(t, lc.l0_weight, lc.l0_start, lc.l0_end),
        linear_ramp(t, w_macs, lc.l0_start, lc.l0_end),
    )


class TrainStep:
    """One optimisation step: forward, task loss + gate losses, backward, optimizer step.

    Returns the step's statistics as one (len(STATS) + 1,) float tensor on the device, each weighted by the
    batch size, then the batch size: the epoch sums them and reads them back every few steps, so a step
    never waits for the host. A gate loss whose weight is 0 is skipped and logged as 0.

    Its pieces (:meth:`task_loss`, :attr:`gate_terms`, :meth:`stats`) are what the fast paths of
    :mod:`batchshaping.fast_step` assemble without branches on the schedule.
    """

    def __init__(
        self,
        model: nn.Module,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        task: ClassificationTask,
        counter: MacCounter,
        cfg: TrainConfig,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.model, self.net, self.optimizer, self.scaler = model, net, optimizer, scaler
        self.task, self.counter, self.loss_cfg, self.amp_dtype = task, counter, cfg.loss, amp_dtype
        self.device = next(model.parameters()).device
        self.gated = any(isinstance(m, ChannelGate) for m in model.modules())
        lc = cfg.loss
        self.bs_loss = BatchShapingLoss(lc.bs_alpha, lc.bs_beta, reduction=lc.bs_reduction)
        # MAC-weighted L0 is the mean over gates of each gate's share of the MACs.
        costs = counter.gate_costs() if lc.l0_reduction == "macs" else None
        self.l0_weights = [c.to(self.device) for c in costs] if costs is not None else None
        self.l0_reduction = "mean" if self.l0_weights is not None else lc.l0_reduction
        # The budget as trained: loss.macs_target plus the calibration of fit's MacBudget. A device tensor
        # changed in place, so compiled and captured steps read a new value without recompiling.
        self.macs_goal = torch.tensor(lc.macs_target or 0.0, device=self.device)
        #: The gate losses, in the order of their weights (w_bs, w_l0, w_macs): gate outputs -> 0-d loss.
        self.gate_terms = (self.bs_term, self.l0_term, self.macs_term)

    def __call__(
        self, x: Tensor, y: Tensor, lr: float, w_bs: float, w_l0: float, w_macs: float = 0.0
    ) -> Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0)
        loss, stats = self.forward_losses(x, y, w_bs, w_l0, w_macs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return stats

    def forward_losses(
        self, x: Tensor, y: Tensor, w_bs: float, w_l0: float, w_macs: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """(loss 0-d, stats (len(STATS) + 1,)) of one batch x (N, C, H, W), y (N, ...)."""
        logits, ce = self.task_loss(x, y)
        zero = ce.new_zeros(())
        if not self.gated:
            return ce, self.stats(ce, ce, (zero, zero, zero), logits, y, None)
        outs = gate_outputs(self.model)
        weights = (w_bs, w_l0, w_macs)
        terms = tuple(term(outs) if w > 0 else zero for term, w in zip(self.gate_terms, weights, strict=True))
        loss = ce
        for w, t in zip(weights, terms, strict=True):
            if w > 0:
                loss = loss + w * t
        return loss, self.stats(loss, ce, terms, logits, y, outs)

    def task_loss(self, x: Tensor, y: Tensor, cache_casts: bool = True) -> tuple[Tensor, Tensor]:
        """(logits, task loss 0-d) of the batch, the forward pass under the run's autocast."""
        with autocast(self.device, self.amp_dtype, cache_casts):
            logits = self.net(x)
        return logits, self.task.loss(logits, y)

    def bs_term(self, outs: list[GateOutput]) -> Tensor:
        return self.bs_loss(batch_shaping_input(outs, self.loss_cfg.bs_sync))

    def l0_term(self, outs: list[GateOutput]) -> Tensor:
        return l0_loss(outs, reduction=self.l0_reduction, weights=self.l0_weights)

    def macs_term(self, outs: list[GateOutput]) -> Tensor:
        expected = self.counter.conditional(outs, expected=True)
        return mac_target_loss(expected, self.counter.dense, self.macs_goal).float()

    @torch.no_grad()
    def stats(
        self,
        loss: Tensor,
        ce: Tensor,
        terms: tuple[Tensor, ...],
        logits: Tensor,
        y: Tensor,
        outs: list[GateOutput] | None,
    ) -> Tensor:
        """The (len(STATS) + 1,) statistics of a step: each of STATS weighted by the batch size, then it."""
        b = len(y)
        open_frac, mac_ratio = ce.new_ones(()), ce.new_ones(())
        if outs is not None:
            open_frac = torch.cat([o.mask for o in outs], 1).mean()
            mac_ratio = self.counter.conditional(outs).mean() / self.counter.dense
        correct = self.task.correct(logits, y)
        stats = [loss * b, ce * b, *(t * b for t in terms), correct, open_frac * b, mac_ratio * b]
        # new_full fills on the device: new_tensor(b) would copy from the host and wait for the GPU.
        return torch.stack([*stats, ce.new_full((), float(b))]).detach()


def sgd(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum and the weight-decay groups of :func:`param_groups`."""
    return torch.optim.SGD(
        param_groups(
            model, cfg.optim.weight_decay, cfg.optim.decay_bn_and_gates, cfg.optim.backbone_lr_factor
        ),
        lr=cfg.optim.lr,
        momentum=cfg.optim.momentum,
        nesterov=cfg.optim.nesterov and cfg.optim.momentum > 0,
    )
