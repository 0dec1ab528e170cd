"""Training: one loop for dense and gated models, every data set, on CPU, CUDA and under torchrun.

    loss = task loss + w_bs(t) * BatchShapingLoss(probs of all gates) + w_l0(t) * l0_loss(gate outputs)
                     + w_macs(t) * mac_target_loss(expected MACs, target)     (with loss.macs_target)

with t in [0, 1] the training progress, w_bs decayed linearly to 0 at ``loss.bs_end`` and w_l0, w_macs
ramped from ``loss.l0_start`` to ``loss.l0_end`` (see :mod:`batchshaping.schedules`). Read top to bottom:
:func:`fit` sets a run up and loops over epochs; :func:`train_epoch` loops over batches; a step is
:class:`~batchshaping.step.TrainStep` (eager) or its compiled or captured form
(:mod:`batchshaping.fast_step`).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from batchshaping import fast_step
from batchshaping.checkpoint import TrainingState, weight_differences
from batchshaping.config import ConfigError, TrainConfig, dump_config, parse_duration
from batchshaping.data import Data
from batchshaping.evaluation import evaluate
from batchshaping.gates import unwrap
from batchshaping.macs import MacCounter
from batchshaping.runtime import (
    init_distributed,
    machine_description,
    memory_format,
    precision_name,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from batchshaping.step import STATS, TrainStep, schedule, sgd


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says which checkpoint, if any, holds the last good
    state."""


def train_epoch(
    step: TrainStep, loader: Iterable[tuple[Tensor, Tensor]], epoch: int, cfg: TrainConfig, bar: Any = None
) -> dict[str, float]:
    """Train one epoch; return the epoch's mean statistics (STATS) and the final lr and loss weights."""
    steps = len(loader)  # type: ignore[arg-type]
    sums = torch.zeros(len(STATS) + 1, device=step.device)
    for i, (x, y) in enumerate(loader):
        lr, w_bs, w_l0, w_macs = schedule(cfg, (epoch + i / steps) / cfg.epochs)
        try:
            sums += step(x, y, lr, w_bs, w_l0, w_macs)
        except ValueError:  # the losses check their inputs: NaN gate probabilities if the weights diverged
            if all(bool(p.isfinite().all()) for p in step.model.parameters()):
                raise
            raise TrainingDiverged(
                f"the weights are no longer finite in epoch {epoch + 1}, step {i + 1}"
            ) from None
        if (i + 1) % 20 == 0 or i + 1 == steps:  # a host read every 20 steps: the NaN check and the bar
            mean = (sums[:-1] / sums[-1]).tolist()
            if not math.isfinite(mean[0]):
                raise TrainingDiverged(f"the loss is {mean[0]} in epoch {epoch + 1}, step {i + 1}")
            if bar is not None:
                bar.set_postfix(
                    {k.removeprefix("train_"): f"{v:.3f}" for k, v in zip(STATS, mean, strict=True)}
                )
        if bar is not None:
            bar.update(1)
    mean = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
    weights = {"lr": lr, "w_bs": w_bs, "w_l0": w_l0, "w_macs": w_macs}
    return {**dict(zip(STATS, mean, strict=True)), **weights}


def fit(
    model: nn.Module,
    data: Data,
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` with ``cfg``'s schedule, losses and logging; return the final summary.

    ``out_dir`` receives config.yaml (written once, when the run starts), log.jsonl, history.jsonl, tb/,
    last.pt, best.pt and summary.json; ``resume`` continues from ``out_dir/last.pt``. A run stopped by
    ``cfg.max_time`` returns ``{"stopped_after": epoch, ...}`` and writes no summary.json; resuming a finished
    run (summary.json) returns its summary with ``"already_finished": True`` and writes nothing.
    """
    if resume and out_dir is not None and (done := finished_run(out_dir)) is not None:
        return done
    limit = TimeLimit(cfg.max_time, cfg.eval_every)  # counted from here
    task, num_classes = data.task, data.num_classes
    dist_info = init_distributed()
    device = resolve_device(cfg.device, dist_info.local_rank)
    amp_dtype = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed + dist_info.rank, cfg.deterministic)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    main = dist_info.is_main
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and main:
        _prepare_run_folder(out, cfg, resume)

    model = model.to(device, memory_format=memory_format(cfg.channels_last))
    name = model_name(model, cfg, num_classes)
    train_loader, test_loader = _device_loaders(data, cfg, device, dist_info)
    input_shape = data.input_shape or tuple(next(iter(test_loader))[0].shape[1:])
    counter = MacCounter(model, input_shape)  # one forward pass of an image: the model takes the data
    if counter.output_shape[:1] != (num_classes,):
        got = counter.output_shape[0] if counter.output_shape else "no"
        raise ConfigError(
            f"the model gives {got} outputs per image, but the data has {num_classes} classes; build it "
            f"with num_classes={num_classes}"
        )
    net = _wrap(model, cfg, device, dist_info.world_size)
    opt = sgd(model, cfg)
    state = TrainingState(model, opt, torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16))
    if resume:
        state.restore(out / "last.pt", device)  # type: ignore[operator]
    eager_step = TrainStep(model, net, opt, state.scaler, task, counter, cfg, amp_dtype)
    budget = MacBudget.for_run(eager_step, cfg, data, train_loader, state) if eager_step.gated else None
    steps_left = (cfg.epochs - state.epoch) * len(train_loader)
    step = fast_step.choose_train_step(
        eager_step, cfg, dist_info.world_size, verbose=main, steps_left=steps_left
    )
    logger = _Logger(out, main)
    precision = precision_name(amp_dtype)
    if main:
        _announce(out, cfg, name, device, precision, state.epoch, len(train_loader))
    bar = _progress_bar(cfg, len(train_loader), state.epoch) if main else None
    t_start, wall_before = time.perf_counter(), state.wall_time_s
    history = _History(out if main else None, state.epoch, device, precision)
    stopped = False
    try:
        for epoch in range(state.epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            train_loader.set_epoch(epoch)
            net.train()
            if bar is not None:
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
            record = {"epoch": epoch + 1, **train_epoch(step, train_loader, epoch, cfg, bar)}
            if budget is not None:
                record.update(budget.after_epoch(epoch + 1, state, dist_info.world_size > 1))
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.eval_every == 0 or last:
                if main:
                    state.metrics = evaluate(model, test_loader, counter, task, amp_dtype)
                    record.update(state.metrics)
                if dist_info.world_size > 1:
                    dist.barrier()
            state.epoch, state.wall_time_s = epoch + 1, wall_before + time.perf_counter() - t_start
            record["wall_time_s"] = state.wall_time_s
            logger.log(record)
            if main:
                eta = (cfg.epochs - state.epoch) * limit.mean_epoch(time.perf_counter() - t_epoch)
                _print_epoch(record, cfg.epochs, task.metric, bar, eta)
            is_best = record.get(task.metric, -math.inf) > state.best_metric
            if is_best:
                state.best_metric = record[task.metric]
            if out is not None and main and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
                state.save(out / "last.pt", cfg, num_classes, task.class_names)
                if is_best:
                    state.save(out / "best.pt", cfg, num_classes, task.class_names)
            limit.epoch_done(time.perf_counter() - t_epoch)
            if not last and not limit.next_epoch_fits(dist_info.world_size > 1):
                stopped = True
                if main:
                    print(limit.stop_message(epoch + 1, cfg.epochs, out), flush=True)
                break
        history.ended = "max_time" if stopped else "finished"
    except TrainingDiverged as e:  # say what the run leaves behind
        history.ended = "diverged"
        raise TrainingDiverged(f"{e}; {_what_is_kept(out)}") from None
    except KeyboardInterrupt:
        history.ended = "interrupted"
        raise
    finally:
        history.write(state.epoch, getattr(step, "path", "eager"))
        logger.close()
        if bar is not None:
            bar.close()

    if stopped:  # no summary.json: the run is not finished
        return {"model": name, "config": cfg.name, "epochs": cfg.epochs, "stopped_after": state.epoch}
    summary = {
        "model": name,
        "config": cfg.name,
        "epochs": cfg.epochs,
        "wall_time_s": wall_before + time.perf_counter() - t_start,
        f"best_{task.metric}": state.best_metric if math.isfinite(state.best_metric) else None,
        **_where(device, precision, dist_info.world_size),
        **state.metrics,
    }
    if out is not None and main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ------------------------------------------------------------------------------------ pieces of fit


class MacBudget:
    """``loss.macs_target`` as evaluation counts it.

    The budget term of the step pulls the *expected* MACs of training batches (gate probabilities, training
    mode: batch statistics in BatchNorm, noisy gates) to a goal; evaluation thresholds the gates of the
    network in evaluation mode, and the two counts differ by a few percent (5,000-image CIFAR-10 runs:
    +6% at the end). So once the budget's weight is at full strength (training progress >= loss.l0_end),
    after every epoch the mean MAC ratio of a fixed set of training images is measured in evaluation mode
    and the goal moves by half of the distance: goal = target + correction, correction += 0.5 * (target -
    measured), within +-0.2. The correction is part of the training state (checkpoints, resume).

    Calibration images: the first 1,024 training images without augmentation (tensor data), or the first
    batches of the training loader drawn once with the global RNG state kept (DataLoaders).
    """

    GAIN, LIMIT, IMAGES = 0.5, 0.2, 1024

    def __init__(
        self, step: TrainStep, cfg: TrainConfig, batches: list[tuple[Tensor, Tensor]], state: TrainingState
    ) -> None:
        self.step, self.cfg, self.batches = step, cfg, batches
        self.target = float(cfg.loss.macs_target)  # type: ignore[arg-type]
        step.macs_goal.fill_(self.target + state.macs_correction)

    @classmethod
    def for_run(
        cls, step: TrainStep, cfg: TrainConfig, data: Data, train_loader: Any, state: TrainingState
    ) -> MacBudget | None:
        """The budget of a run with ``loss.macs_target`` (None without one)."""
        if cfg.loss.macs_target is None:
            return None
        if isinstance(data.train, tuple | list):
            from batchshaping.data import as_loader

            x, y = data.train[0][: cls.IMAGES], data.train[1][: cls.IMAGES]
            mean, std = train_loader.mean, train_loader.std
            batches = list(as_loader((x, y), cfg.data.eval_batch_size, False, step.device, mean, std))
        else:
            with torch.random.fork_rng(devices=[step.device] if step.device.type == "cuda" else []):
                batches, n = [], 0
                for xb, yb in train_loader:
                    batches.append((xb, yb))
                    n += len(xb)
                    if n >= cls.IMAGES:
                        break
        return cls(step, cfg, batches, state)

    def measure(self) -> float:
        """Mean MAC ratio (of the dense MACs) of the calibration images: the evaluation pass's count."""
        s = self.step
        return evaluate(s.model, self.batches, s.counter, s.task, s.amp_dtype)["mac_ratio"]

    def after_epoch(self, epoch: int, state: TrainingState, distributed: bool) -> dict[str, float]:
        """Measure and correct after ``epoch`` (1-based) once the weight is full; the values for the log."""
        if epoch / self.cfg.epochs < self.cfg.loss.l0_end:
            return {}
        ratio = self.measure()
        correction = state.macs_correction + self.GAIN * (self.target - ratio)
        correction = min(self.LIMIT, max(-self.LIMIT, correction))
        if distributed:  # every rank trains to rank 0's goal
            correction = _from_rank0(correction)
        state.macs_correction = correction
        self.step.macs_goal.fill_(self.target + correction)
        return {"macs_calibration_ratio": ratio, "macs_goal": self.target + correction}


class TimeLimit:
    """``max_time``: may another epoch start? Judged from this process's own epoch times (training,
    evaluation and checkpoints), counted from the construction of this object.

    The estimate of the next epoch is the longest of the last ``eval_every`` epochs (so an evaluation epoch
    is in it), leaving out the process's first epoch once there are others (it carries the compilation of
    a compiled step and other warm-up). The first epoch always runs.
    """

    def __init__(self, max_time: float | str | None, eval_every: int = 1) -> None:
        self.seconds = parse_duration(max_time) if max_time is not None else None
        self.eval_every = max(1, eval_every)
        self.start = time.perf_counter()
        self.epochs: list[float] = []

    def epoch_done(self, seconds: float) -> None:
        self.epochs.append(seconds)

    def estimate(self) -> float:
        """Seconds the next epoch is expected to take (0 before the first)."""
        recent = self.epochs[1:] if len(self.epochs) > 1 else self.epochs
        return max(recent[-self.eval_every :], default=0.0)

    def mean_epoch(self, current: float) -> float:
        """Mean seconds per epoch of this process, ``current`` (the epoch in progress) included: the ETA's
        pace. This process's, not the run's (a resumed run may train on another machine or thread count),
        and without its first epoch once there are others (compilation)."""
        times = [*self.epochs, current]
        times = times[1:] if len(times) > 1 else times
        return sum(times) / len(times)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def next_epoch_fits(self, distributed: bool = False) -> bool:
        """True without a limit; under DDP rank 0 decides for every rank (their clocks differ)."""
        if self.seconds is None:
            return True
        fits = self.elapsed() + self.estimate() <= self.seconds
        if distributed:
            fits = bool(_from_rank0(float(fits)))
        return fits

    def stop_message(self, epoch: int, epochs: int, out: Path | None) -> str:
        where = f"last.pt and log.jsonl in {out}; continue with: batchshaping train --out {out} --resume"
        return (
            f"stopped after epoch {epoch}/{epochs}: max_time {_duration(self.seconds or 0)} leaves no room "
            f"for another epoch (~{_duration(self.estimate())} each, {_duration(self.elapsed())} elapsed); "
            + (where if out is not None else "no run folder to continue from")
        )


def _from_rank0(value: float) -> float:
    """Rank 0's ``value`` on every rank (a host decision that all ranks must share)."""
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(t, 0)
    return float(t.item())


def _collective_device() -> torch.device:
    """The device of this rank's collectives: its GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resumable(out: str | Path) -> Path:
    """The last.pt of the run folder ``out``; ConfigError if there is none to resume from."""
    last = Path(out) / "last.pt"
    if not last.is_file():
        raise ConfigError(f"--resume: {str(out)!r} has no last.pt; nothing to resume")
    return last


def finished_run(out: str | Path) -> dict[str, Any] | None:
    """The summary of the finished run in ``out`` (its summary.json) with ``"already_finished": True``, and
    a line that says so: resuming it trains nothing and writes nothing. None if it has not finished."""
    path = Path(out) / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    if init_distributed().is_main:
        epochs = summary.get("epochs")
        print(
            f"{out} has finished (epoch {epochs}/{epochs}, {path.name}): nothing to resume, nothing written. "
            f"Evaluate it with `batchshaping eval {out}`; to train on from its weights, start a new run with "
            f"--set pretrained={out}/last.pt"
        )
    return {**summary, "already_finished": True}


def _prepare_run_folder(out: Path, cfg: TrainConfig, resume: bool) -> None:
    """Create the run folder and write config.yaml for a new run; check that a resumed one can go on."""
    if resume:
        resumable(out)
        return
    # A finished run's folder may keep only its results (published run folders leave out the .pt files):
    # a new run would overwrite them as much as a checkpoint. A folder left by a run stopped before its
    # first epoch ended (config.yaml, an empty log) holds nothing to lose and may be reused.
    log = out / "log.jsonl"
    held = [f for f in ("last.pt", "best.pt", "summary.json") if (out / f).exists()]
    held += ["log.jsonl"] if log.is_file() and log.stat().st_size > 0 else []
    if held:
        hint = "continue it with --resume or " if "last.pt" in held else ""
        raise ConfigError(f"{str(out)!r} already holds a run ({', '.join(held)}); {hint}pick another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
    except OSError as e:
        raise ConfigError(
            f"cannot write the run folder {str(out)!r} ({e.strerror}); pass another --out"
        ) from None


def _device_loaders(data: Data, cfg: TrainConfig, device: torch.device, dist_info: Any) -> tuple[Any, Any]:
    """Tensor data -> device-resident TensorLoaders with this run's seed and shard; DataLoaders pass."""
    from batchshaping.data import as_loader

    tensors = isinstance(data.train, tuple | list)
    mean, std = data.mean, data.std
    if tensors and mean is None:
        x = torch.as_tensor(data.train[0])
        xf = x.float() / (255.0 if x.dtype == torch.uint8 else 1.0)
        mean, std = xf.mean((0, 2, 3)).tolist(), xf.std((0, 2, 3)).tolist()
    kw: dict[str, Any] = dict(mean=mean or [0.0], std=std or [1.0], channels_last=cfg.channels_last)
    train_kw = dict(
        seed=cfg.seed, augment=cfg.data.augment, rank=dist_info.rank, world_size=dist_info.world_size
    )
    per_rank = cfg.data.batch_size // dist_info.world_size
    train = as_loader(data.train, per_rank, True, device, **kw, **(train_kw if tensors else {}))
    if len(train) == 0:
        raise ConfigError(
            f"the training set holds no full batch of data.batch_size={cfg.data.batch_size} "
            f"(per process: {per_rank}); lower data.batch_size or train on more images (data.train_subset)"
        )
    test_kw = dict(seed=cfg.seed) if isinstance(data.test, tuple | list) else {}
    return train, as_loader(data.test, cfg.data.eval_batch_size, False, device, **kw, **test_kw)


def _wrap(model: nn.Module, cfg: TrainConfig, device: torch.device, world_size: int) -> nn.Module:
    """The module the step calls: SyncBatchNorm and DDP as the config asks (compilation: fast_step)."""
    net = model
    if cfg.sync_bn and world_size > 1:
        if device.type != "cuda":
            warnings.warn(
                "sync_bn needs CUDA (torch's SyncBatchNorm is GPU-only); ignored on CPU", stacklevel=2
            )
        else:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    return net


def model_name(model: nn.Module, cfg: TrainConfig, num_classes: int | None) -> str:
    """``cfg.model`` when ``model`` is that registry model (the same parameter names and shapes), else its
    class name: fit trains any nn.Module, and its run folder must not claim another network."""
    from batchshaping.models import model_from_config

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ref = model_from_config(cfg, num_classes).state_dict()
    model = unwrap(model)
    return type(model).__name__ if any(weight_differences(ref, model.state_dict()).values()) else cfg.model


def _announce(
    out: Path | None,
    cfg: TrainConfig,
    name: str,
    device: torch.device,
    precision: str,
    done: int,
    steps: int,
) -> None:
    """The run's first line: where it writes, what it trains, on what, and what is left."""
    todo = (
        f"epochs {done + 1}-{cfg.epochs}, {steps} steps each"
        if done < cfg.epochs
        else f"all {cfg.epochs} epochs are done, nothing to train"
    )
    where = f"run folder {out}" if out else "no run folder"
    what = f"{cfg.model} ({cfg.name})"
    if name != cfg.model:  # a network of the caller's, trained with the recipe of cfg
        what = f"{name}, not the registry's {cfg.model}, with recipe {cfg.name}"
    print(f"{where}: {what} on {device} ({precision}), {todo}", flush=True)


def _where(device: torch.device, precision: str, world_size: int) -> dict[str, Any]:
    return {
        "device": str(device),
        "machine": machine_description(device),
        "precision": precision,
        "world_size": world_size,
    }


def _what_is_kept(out: Path | None) -> str:
    """The truth about the last good state after a divergence, for the error message."""
    if out is None or not (out / "last.pt").is_file():
        return "no checkpoint had been written yet; lower optim.lr or the loss weights and start again"
    from batchshaping.checkpoint import load_checkpoint

    epoch = load_checkpoint(out / "last.pt")["epoch"]
    return (
        f"{out / 'last.pt'} (after epoch {epoch}) holds the last good state; lower optim.lr or the loss "
        "weights and start a new run from it (pretrained=...) or again"
    )


class _History:
    """history.jsonl: one line per process that trained the run (a run may continue on other machines):
    the epochs it trained, how it ended, where, in what precision and with which step."""

    def __init__(self, out: Path | None, from_epoch: int, device: torch.device, precision: str) -> None:
        self.out, self.from_epoch, self.ended = out, from_epoch, "error"
        self.start, self.t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()
        self.where = {"device": str(device), "machine": machine_description(device)}
        self.where.update(precision=precision, torch=torch.__version__)

    def write(self, to_epoch: int, step_path: str) -> None:
        if self.out is None or not self.out.is_dir():
            return
        record = {"from_epoch": self.from_epoch, "to_epoch": to_epoch, "ended": self.ended}
        record.update(started=self.start, wall_s=round(time.perf_counter() - self.t0, 1), step=step_path)
        record.update(self.where)
        with (self.out / "history.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


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


def _progress_bar(cfg: TrainConfig, steps: int, start_epoch: int) -> Any:
    """One bar over every step of the run, so its ETA is the whole run's. None without tqdm, with
    ``progress: false``, and by default when stderr is not a terminal (a log file would get an update per
    step; the one line per epoch carries the ETA)."""
    import sys

    wanted = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    if not wanted:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=cfg.epochs * steps, initial=start_epoch * steps, dynamic_ncols=True, leave=False)


def _print_epoch(r: dict[str, Any], epochs: int, metric: str, bar: Any, eta: float) -> None:
    done = r["epoch"]
    line = f"epoch {done}/{epochs}  loss {r['train_loss']:.3f}  train acc {100 * r['train_acc']:.1f}%"
    if metric in r:
        line += (
            f"  {metric} {100 * r[metric]:.2f}%  MACs {r['macs_mean'] / 1e6:.2f}M"
            f" ({r['mac_ratio']:.3f} of dense)"
            f"  gates on/off/cond {100 * r['gates_always_on']:.0f}/{100 * r['gates_always_off']:.0f}/"
            f"{100 * r['gates_conditional']:.0f}%"
        )
    line += f"  {r['wall_time_s']:.0f}s, ETA {_duration(eta)}"
    (bar.write if bar is not None else print)(line)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
