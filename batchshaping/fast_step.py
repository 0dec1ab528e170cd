"""The fast training step: :class:`~batchshaping.step.TrainStep`'s work as one replayed CUDA graph (or
compiled with torch.compile), for GPUs where small CIFAR ResNets are bound by kernel launches and Python.

:class:`FastTrainStep` does what :class:`~batchshaping.step.TrainStep` does (forward, task loss + gate
losses, backward, SGD with momentum; returns the same stats tensor) as code without host synchronisation
and without Python branches on values that change during training, so that it can run on one of three paths:

* ``"captured"`` (CUDA): a few eager warm-up steps on a side stream, then the whole step is captured once
  in a ``torch.cuda.CUDAGraph``; every later step copies its batch into the graph's static input tensors
  and replays it: one graph launch in place of every kernel launch of the step, and no Python per kernel;
* ``"compiled"``: the forward + losses and the SGD update each compiled with ``torch.compile`` (mode
  "reduce-overhead" on CUDA: CUDA graphs of each compiled piece);
* ``"eager"``: the same code run as it is (the CPU tests of the two paths above use it).

Where it differs from TrainStep, and why:

* Schedules: lr, w_bs, w_l0 and w_macs live on the device (:class:`ScheduleTensors`, a (4,) float64
  tensor) and are filled in place before each step with the host's ``schedule(cfg, t)`` values; the
  graph reads them from there, so it is never recaptured when they change.
* Gate losses: all are always computed and multiplied by their weight tensors (TrainStep skips a loss
  whose weight is 0: a branch on a host value). A weight of 0 adds exactly 0 to the loss and gradients
  (unless the gates are already NaN, a diverged run either way); the logged loss is 0 then, as in TrainStep.
* Optimizer: :func:`sgd_update`, torch.optim.SGD's update (weight decay, momentum, dampening, Nesterov)
  in foreach ops that read the learning rates from the device. It keeps its momentum in the optimizer's
  own state (``opt.state[p]["momentum_buffer"]``) and each group's ``lr`` is still set to its float, so
  ``opt.state_dict()``, checkpoints and resume are those of the eager step, which can take over at any
  step (it does when a capture fails). torch.optim.SGD itself is not used: its foreach path reads a
  tensor lr with ``.item()`` (a sync, not capturable) and its fused path cannot be tested without a GPU.
* No loss scaling: fp16's GradScaler decides on the host whether to step, so fp16 runs stay eager; bf16
  and fp32 need none.

Constraints of the captured path (a graph replays fixed kernels on fixed memory addresses):

* Static batch: the graph is captured for the first batch's shapes and dtypes. A batch of other shapes (a
  DataLoader's last partial batch) runs the same step uncaptured; ``TensorLoader(train=True)`` drops the
  last partial batch, so CIFAR-10 training replays every step.
* Fixed tensors: parameters, BatchNorm buffers, momentum buffers and the schedule tensor must keep their
  storage. In-place changes are seen by the graph (``model.load_state_dict`` copies in place); replaced
  tensors are not. After ``optimizer.load_state_dict``, ``model.to(...)``, or a change of the parameter
  groups or of their momentum, weight decay or ``lr_factor`` (read once, as constants), call
  :meth:`FastTrainStep.reset`: the next steps warm up and capture again.
* Fixed decisions: the model's train/eval mode (BatchNorm, gate noise), the autocast dtype, the gates'
  ``force``, the loss configuration and which parameters get gradients are frozen at capture.
* One process: DDP's collectives and gradient buckets are not captured; DDP runs stay eager.
* The returned stats tensor is a static output of the graph, overwritten by the next step: add it up
  (as ``train_epoch`` does) before the next call.
* The gates' noise comes from the same generator as in eager mode (graph-safe Philox offsets); that a
  captured run draws the very numbers of an eager one with the same seed is neither guaranteed nor checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from batchshaping.gates import clear_gate_outputs, gate_outputs
from batchshaping.step import TrainStep, schedule

if TYPE_CHECKING:
    from batchshaping.config import TrainConfig

#: Step paths, as printed: "training step: <path> (<reason>)".
PATHS = ("eager", "compiled", "captured")

#: Device types whose steps can be captured. With ``_cuda`` (the CUDA API this module calls), replaced by a
#: stand-in in the CPU tests of the capture logic.
CAPTURE_DEVICE_TYPES: tuple[str, ...] = ("cuda",)
_cuda = torch.cuda

#: Eager steps before the capture: cuDNN picks its algorithms (benchmark mode), the batch-shaping prior
#: builds its table on the device and SGD creates its momentum buffers, none of which may happen in a capture.
WARMUP_STEPS = 3


class ScheduleTensors:
    """(lr, w_bs, w_l0, w_macs) as a (4,) float64 tensor on ``device``, updated in place.

    :meth:`fill` writes the values of :func:`~batchshaping.step.schedule` (Python floats) with one fill
    kernel each: no host buffer that the host could overwrite before the device reads it, no sync, and the
    same memory for every step, which a captured graph reads. float64 holds the floats exactly.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.values = torch.zeros(4, dtype=torch.float64, device=device)
        self.lr, self.w_bs, self.w_l0, self.w_macs = self.values.unbind()  # 0-d views of values

    def fill(self, lr: float, w_bs: float, w_l0: float, w_macs: float = 0.0) -> None:
        slots = (self.lr, self.w_bs, self.w_l0, self.w_macs)
        for slot, value in zip(slots, (lr, w_bs, w_l0, w_macs), strict=True):
            slot.fill_(value)

    def set_progress(self, cfg: TrainConfig, t: float) -> tuple[float, float, float, float]:
        """Fill the values at training progress ``t`` in [0, 1]; return them as floats."""
        values = schedule(cfg, t)
        self.fill(*values)
        return values


class SGDGroup(NamedTuple):
    """One parameter group of torch.optim.SGD without its learning rate (read from the device instead)."""

    params: list[Tensor]
    weight_decay: float
    momentum: float
    dampening: float
    nesterov: bool


def sgd_groups(opt: torch.optim.SGD) -> list[SGDGroup]:
    """The groups of ``opt`` as :func:`sgd_update` reads them: a snapshot, so a compiled update guards on
    these constants only and not on each group's ``lr``, which changes every step (a recompile each time)."""
    if any(g.get("maximize") for g in opt.param_groups):
        raise ValueError("sgd_update does not implement maximize=True")
    keys = ("weight_decay", "momentum", "dampening", "nesterov")
    return [SGDGroup(list(g["params"]), *(g[k] for k in keys)) for g in opt.param_groups]


@torch.no_grad()
def sgd_update(
    groups: Sequence[SGDGroup], state: dict, grads: Sequence[Sequence[Tensor | None]], neg_lrs: Tensor
) -> None:
    """One step of torch.optim.SGD on the parameters of ``groups`` that have a gradient, with learning
    rates from the device.

    groups: :func:`sgd_groups` of the optimizer; state: its ``state`` (momentum buffers are
    ``state[p]["momentum_buffer"]``, created on the first step as SGD creates them, = the first gradient
    with weight decay, then updated in place). grads: ``grads[k][i]`` is the gradient of
    ``groups[k].params[i]`` or None (the parameter is skipped, as SGD skips it), see :func:`gradients`;
    given rather than read from ``p.grad`` so that a compiled update does not guard on gradient tensors
    that ``zero_grad(set_to_none=True)`` frees every step. neg_lrs: (len(groups),) minus each group's
    learning rate, on the parameters' device (float32 for float32 parameters: SGD's kernels round its float
    lr to the parameters' dtype too). The gradients are not modified.
    """
    for k, group in enumerate(groups):
        params = [p for p, g in zip(group.params, grads[k], strict=True) if g is not None]
        if not params:
            continue
        grads_k = [g for g in grads[k] if g is not None]
        if group.weight_decay != 0:
            grads_k = torch._foreach_add(grads_k, params, alpha=group.weight_decay)
        if group.momentum != 0:
            momentum, dampening = group.momentum, group.dampening
            bufs = [state[p].get("momentum_buffer") if p in state else None for p in params]
            if any(b is None for b in bufs):  # first step (host state, decided before any capture)
                for i, p in enumerate(params):
                    if bufs[i] is None:
                        bufs[i] = state[p]["momentum_buffer"] = grads_k[i].detach().clone()
                    else:
                        bufs[i].mul_(momentum).add_(grads_k[i], alpha=1 - dampening)
            else:
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads_k, alpha=1 - dampening)
            grads_k = torch._foreach_add(grads_k, bufs, alpha=momentum) if group.nesterov else bufs
        torch._foreach_add_(params, torch._foreach_mul(grads_k, neg_lrs[k]))


def gradients(groups: Sequence[SGDGroup]) -> list[list[Tensor | None]]:
    """``p.grad`` of every parameter of ``groups``, for :func:`sgd_update`."""
    return [[p.grad for p in group.params] for group in groups]


def unsupported(step: TrainStep, world_size: int = 1) -> str | None:
    """Why ``step``'s run cannot take a fast path (None if it can)."""
    opt = step.optimizer
    if world_size > 1 or isinstance(step.net, torch.nn.parallel.DistributedDataParallel):
        return f"DDP with {world_size} processes: collectives are not captured"
    if step.scaler.is_enabled():
        return "fp16 loss scaling: GradScaler decides on the host whether to step"
    if type(opt) is not torch.optim.SGD or any(g.get("maximize") for g in opt.param_groups):
        return f"the fast step implements plain SGD, not {type(opt).__name__}"
    return None


#: ``step: auto`` compiles a gated model's step on CPU when at least this many steps are left: compiled,
#: gated_resnet32's bf16 step is ~0.2 s (1.5x) faster on a 2-core Xeon, which wins back a cold compilation
#: (~160 s) in ~800 steps (benchmarks/README.md, "The compiled step on CPU"). Dense models stay eager:
#: that gain was measured for the gated step only.
AUTO_COMPILE_MIN_STEPS = 2000


def choose_path(
    requested: str, step: TrainStep, world_size: int = 1, steps_left: int | None = None
) -> tuple[str, str]:
    """(path, reason) for the config's ``step`` value (auto | eager | compile | graph) and this run with
    ``steps_left`` training steps to go (None: unknown, as for a short run)."""
    if requested == "eager":
        return "eager", "step=eager"
    why_not = unsupported(step, world_size)
    if why_not is not None:
        return "eager", why_not
    cuda = step.device.type == "cuda"
    if requested == "compile":
        return "compiled", f"step=compile: torch.compile mode {compile_mode_for(step.device)!r}"
    if cuda:
        return "captured", (
            f"step={requested} on CUDA: forward, losses, backward and SGD replayed as one CUDA graph, "
            f"captured after {WARMUP_STEPS} eager warm-up steps"
        )
    if requested == "graph":
        return "eager", f"step=graph needs CUDA graphs; {step.device.type} runs eagerly"
    cpu = step.device.type == "cpu"
    long_run = steps_left is not None and steps_left >= AUTO_COMPILE_MIN_STEPS
    if cpu and requested == "auto" and step.gated and long_run:
        return "compiled", (
            f"step=auto on cpu: a gated model with {steps_left} steps to go, where compiling (minutes, once "
            "per process) pays; --set step=eager to skip it"
        )
    hint = "; a long run may go faster with --set step=compile (benchmarks/README.md)" if cpu else ""
    return "eager", f"step=auto on {step.device.type}: nothing to capture{hint}"


def compile_mode_for(device: torch.device) -> str:
    """torch.compile mode of the compiled path: CUDA graphs (of each compiled piece) on CUDA."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def choose_train_step(
    step: TrainStep,
    cfg: TrainConfig,
    world_size: int = 1,
    verbose: bool = True,
    steps_left: int | None = None,
) -> TrainStep | FastTrainStep:
    """The step :func:`~batchshaping.train.fit` runs: ``step`` itself or a FastTrainStep around it, by the
    config's ``step`` key (see :func:`choose_path`); prints "training step: <path> (<reason>)"."""
    path, reason = choose_path(cfg.step, step, world_size, steps_left)
    if verbose:
        print(f"training step: {path} ({reason})", flush=True)
    if path == "eager":
        return step
    mode = compile_mode_for(step.device) if path == "compiled" else None
    return FastTrainStep(step, capture=path == "captured", compile_mode=mode, verbose=verbose)


class FastTrainStep:
    """TrainStep's work without host syncs: captured in a CUDA graph, compiled, or run as it is.

    Built around an eager :class:`~batchshaping.step.TrainStep` (its model, optimizer, task, losses and
    MAC counter), which also runs every step if a capture fails. Called like it:
    ``step(x, y, lr, w_bs, w_l0, w_macs)`` with x (N, C, H, W), y (N,) on the device and the scheduled
    values as floats; returns (len(STATS) + 1,) stats: each statistic weighted by N, then N (a static
    output of the graph when captured: read or add it before the next call).

    Args:
        eager: the TrainStep to reproduce (and to fall back to).
        capture: capture the step in a CUDA graph after ``warmup`` eager steps (CUDA only).
        compile_mode: torch.compile mode for the forward + losses and the update, None: not compiled.
            With ``capture``, a mode without CUDA graphs ("default", "max-autotune-no-cudagraphs").
        warmup: eager steps before the capture (>= 1: SGD's momentum buffers must exist).
        verbose: print a line if the capture fails.
        compile_backend: torch.compile backend ("aot_eager" traces without generating code: CPU tests).

    Attributes: ``path`` (one of :data:`PATHS`), ``graph`` (the CUDAGraph once captured), ``warmup_s``
    (wall time of the warm-up steps and the capture, or of the first compiled step), ``uncaptured_steps``.
    """

    def __init__(
        self,
        eager: TrainStep,
        capture: bool,
        compile_mode: str | None = None,
        warmup: int = WARMUP_STEPS,
        verbose: bool = True,
        compile_backend: str | Callable = "inductor",
    ) -> None:
        if capture and eager.device.type not in CAPTURE_DEVICE_TYPES:
            raise ValueError(f"capture needs a CUDA device, the model is on {eager.device}")
        if capture and (warmup < 1 or compile_mode == "reduce-overhead"):
            raise ValueError("capture needs warmup >= 1 and a compile mode without CUDA graphs")
        self.eager, self.capture, self.warmup, self.verbose = eager, capture, warmup, verbose
        self.model, self.optimizer, self.device = eager.model, eager.optimizer, eager.device
        self.sched = ScheduleTensors(self.device)
        self.path = "captured" if capture else "compiled" if compile_mode else "eager"
        self.fallback: TrainStep | None = None
        self.warmup_s, self.uncaptured_steps = 0.0, 0
        self._fwd, self._upd = self._forward_losses, self._update
        if compile_mode is not None:
            kw = dict(mode=compile_mode) if compile_backend == "inductor" else {}
            self._fwd = torch.compile(self._forward_losses, backend=compile_backend, dynamic=False, **kw)
            self._upd = torch.compile(self._update, backend=compile_backend, dynamic=False, **kw)
        self.reset()

    def reset(self) -> None:
        """Forget the graph and the factors read from the optimizer: warm up and capture again."""
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[Tensor, Tensor, Tensor] | None = None  # x, y, stats of the graph
        self._signature: tuple | None = None  # shapes and dtypes the graph is (to be) captured for
        self._warm = 0
        self._stream = _cuda.Stream(self.device) if self.capture else None
        groups = self.optimizer.param_groups
        self._groups = sgd_groups(self.optimizer)
        self._factors = [float(g.get("lr_factor", 1.0)) for g in groups]
        self._neg_factors = torch.tensor([-f for f in self._factors], dtype=torch.float64, device=self.device)
        params = [p for g in groups for p in g["params"]]
        self._lr_dtype = torch.float32 if all(p.dtype == torch.float32 for p in params) else torch.float64

    def __call__(
        self, x: Tensor, y: Tensor, lr: float, w_bs: float, w_l0: float, w_macs: float = 0.0
    ) -> Tensor:
        sched = (lr, w_bs, w_l0, w_macs)
        if self.fallback is not None:
            return self.fallback(x, y, *sched)
        for group, factor in zip(self.optimizer.param_groups, self._factors, strict=True):
            group["lr"] = lr * factor  # what TrainStep sets: the state_dict stays the same (unused here)
        self.sched.fill(*sched)
        if self.path == "compiled" and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed
        if not self.capture:
            return self._step(x, y) if self._warm else self._first(x, y, sched)
        signature = (x.shape, x.dtype, y.shape, y.dtype)
        self._signature = self._signature or signature
        if signature != self._signature:  # another batch size: the same step, uncaptured
            self.uncaptured_steps += 1
            return self._step(x, y)
        if self.graph is not None:
            sx, sy, stats = self._static  # type: ignore[misc]
            sx.copy_(x)
            sy.copy_(y)
            self.graph.replay()
            return stats
        if self._warm < self.warmup:
            return self._timed(x, y, side_stream=True)
        return self._capture(x, y, sched)

    # ------------------------------------------------------------------------------ the step itself

    def _step(self, x: Tensor, y: Tensor) -> Tensor:
        """Forward, losses, backward, update: pure device work, the unit that is captured."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, stats = self._fwd(x, y)
        loss.backward()
        self._upd(gradients(self._groups))
        return stats

    def _forward_losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(loss 0-d, stats (len(STATS) + 1,)) of TrainStep: every gate loss computed and multiplied by its
        weight on the device (no branch on the schedule), a loss whose weight is 0 logged as 0."""
        step = self.eager
        weights = self.sched.values[1:].to(torch.float32).unbind()  # the losses' dtype, as floats are
        # No weight-cast cache: cached casts would outlive the capture that made them.
        logits, ce = step.task_loss(x, y, cache_casts=False)
        zero = ce.new_zeros(())
        if not step.gated:
            return ce, step.stats(ce, ce, (zero, zero, zero), logits, y, None)
        outs = gate_outputs(step.model)
        terms = tuple(term(outs) for term in step.gate_terms)
        loss = ce
        for w, t in zip(weights, terms, strict=True):
            loss = loss + w * t
        logged = tuple(torch.where(w > 0, t.detach(), 0.0) for w, t in zip(weights, terms, strict=True))
        return loss, step.stats(loss, ce, logged, logits, y, outs)

    def _update(self, grads: list[list[Tensor | None]]) -> None:
        neg_lrs = (self.sched.lr * self._neg_factors).to(self._lr_dtype)
        sgd_update(self._groups, self.optimizer.state, grads, neg_lrs)

    # --------------------------------------------------------------------------- warm-up and capture

    def _timed(self, x: Tensor, y: Tensor, side_stream: bool = False) -> Tensor:
        """An uncaptured step counted as warm-up (its time in ``warmup_s``); on the capture's side stream
        if asked, as capture needs (lazy initialisations there, not on the default stream)."""
        t0 = time.perf_counter()
        self._warm += 1
        if not side_stream:
            stats = self._step(x, y)
        else:
            main = _cuda.current_stream(self.device)
            self._stream.wait_stream(main)  # type: ignore[union-attr]
            with _cuda.stream(self._stream):
                stats = self._step(x, y)
            main.wait_stream(self._stream)  # type: ignore[arg-type]
        if self.capture or self.device.type == "cuda":
            _cuda.synchronize(self.device)  # warm-up time includes the device's work
        self.warmup_s += time.perf_counter() - t0
        return stats

    def _first(self, x: Tensor, y: Tensor, sched: tuple[float, ...]) -> Tensor:
        """The first uncaptured step, timed; where it compiles, a compilation error hands over to the eager
        step (compiled code runs before the update, so the batch has not been trained on)."""
        try:
            return self._timed(x, y)
        except Exception as e:
            if self.path != "compiled":
                raise
            self._fall_back(f"compilation failed: {_first_error(e)}")
            return self.fallback(x, y, *sched)  # type: ignore[misc]

    def _capture(self, x: Tensor, y: Tensor, sched: tuple[float, ...]) -> Tensor:
        """Capture the step on static copies of (x, y), then replay it once for this batch. On any error
        the eager TrainStep takes over (the batch is then trained by it)."""
        t0 = time.perf_counter()
        sx, sy = torch.empty_like(x), torch.empty_like(y)
        sx.copy_(x)
        sy.copy_(y)
        graph, main = _cuda.CUDAGraph(), _cuda.current_stream(self.device)
        try:
            self._check_ready()
            with _cuda.graph(graph, stream=self._stream):
                stats = self._step(sx, sy)
        except Exception as e:  # whatever failed, the eager step is correct
            _cuda.set_stream(main)  # graph's __exit__ leaves the capture stream current if capture_end raised
            del graph
            self.optimizer.zero_grad(set_to_none=True)  # grads of the capture were never computed
            clear_gate_outputs(self.model)
            self._fall_back(f"capture failed: {_first_error(e)}")
            return self.fallback(x, y, *sched)  # type: ignore[misc]
        clear_gate_outputs(self.model)  # they hold the capture's autograd graph
        self.graph, self._static = graph, (sx, sy, stats)
        graph.replay()
        _cuda.synchronize(self.device)
        self.warmup_s += time.perf_counter() - t0
        return stats

    def _check_ready(self) -> None:
        """What the capture needs from the warm-up: momentum buffers (created by SGD's first step) for
        every parameter that got a gradient."""
        state = self.optimizer.state
        for group in self._groups:
            if group.momentum != 0 and any(
                p.grad is not None and "momentum_buffer" not in state.get(p, {}) for p in group.params
            ):
                raise RuntimeError("momentum buffers missing before the capture (no warm-up step?)")

    def _fall_back(self, reason: str) -> None:
        """Hand every later step to the eager TrainStep, for ``reason``."""
        self.fallback, self.path, self.graph, self._static = self.eager, "eager", None, None
        if self.verbose:
            print(f"training step: eager ({reason})", flush=True)


def _first_error(e: BaseException) -> str:
    """The error that started a chain (a failed capture's own error, not the capture_end error that the
    graph context raises while handling it), as one short line."""
    while e.__context__ is not None and e.__context__ is not e:
        e = e.__context__
    lines = str(e).strip().splitlines() or [""]
    return f"{type(e).__name__}: {lines[0][:200]}"
