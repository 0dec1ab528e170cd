"""Training configuration: dataclasses, YAML files, ``--set key=value`` overrides, clear errors.

Every schedule point is a *fraction of the total epochs*, so one recipe keeps its shape at any length:
the paper's CIFAR-10 recipe (500 epochs, lr x0.1 at epochs 300/375/450, batch-shaping decayed to 0 by
epoch 100, L0 ramped over epochs 100-300) is ``lr_milestones: [0.6, 0.75, 0.9]``, ``bs_end: 0.2``,
``l0_start: 0.2``, ``l0_end: 0.6`` with ``epochs: 500``; ``--set epochs=30`` gives the same shape in 30.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from batchshaping.models.blocks import GateConfig

#: The recipes shipped with the package (``configs/`` at the repository root links here).
RECIPES_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and the fix."""


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | imagenet | cityscapes
    root: str | None = None  # None: --data-dir, then $BATCHSHAPING_DATA, then ./data/cifar10
    batch_size: int = 256  # global batch size, split over DDP ranks
    eval_batch_size: int = 1000
    augment: bool = True
    workers: int = 4  # decoding processes (ImageNet / Cityscapes); CIFAR-10 lives on the device
    image_size: int = 224  # ImageNet train crop / Cityscapes crop side
    eval_size: list[int] | None = None  # Cityscapes evaluation [H, W]; None: the images' own size
    download: bool = False
    train_subset: int | None = None  # use only the first N training / test images (smoke tests)
    test_subset: int | None = None


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    # Weight decay on BatchNorm and gate parameters. Off by default: decay would pull the gate logits
    # towards 0 (a 50% on-rate) and fight the losses that shape them; BN scales are not decayed either.
    decay_bn_and_gates: bool = False
    lr_milestones: list[float] = field(default_factory=lambda: [0.6, 0.75, 0.9])  # fractions of epochs
    lr_gamma: float = 0.1
    warmup: float = 0.0  # linear lr warm-up, fraction of epochs
    # Learning rate of everything but the gates, as a factor of lr (fine-tuning a dense network: 0 trains
    # only the gates, 0.1 lets the backbone adapt slowly).
    backbone_lr_factor: float = 1.0


@dataclass
class LossConfig:
    bs_weight: float = 0.75  # batch-shaping weight at the start ...
    bs_end: float = 0.2  # ... decayed linearly to 0 at this fraction of training
    bs_alpha: float = 0.6  # Beta prior of the gate probabilities
    bs_beta: float = 0.4
    bs_reduction: str = "sum"  # sum | mean over gates (see BatchShapingLoss)
    bs_sync: bool = False  # DDP: batch-shaping over the global batch (all-gather with gradient)
    l0_weight: float = 0.0  # final L0 weight ...
    l0_start: float = 0.2  # ... ramped linearly from 0 at l0_start to l0_weight at l0_end (fractions)
    l0_end: float = 0.6
    l0_reduction: str = "sum"  # mean | sum | macs (see l0_loss / MacCounter.gate_costs)
    # A compute budget instead of (or beside) a fixed L0 weight: the mean expected MACs of a batch, as a
    # fraction of the dense twin's, are pulled to macs_target by macs_weight * (ratio - macs_target)^2
    # (DGNet's FLOPs loss; see losses.mac_target_loss). macs_weight is ramped like L0 (l0_start -> l0_end).
    macs_target: float | None = None  # None: no budget term
    macs_weight: float = 20.0


@dataclass
class TrainConfig:
    name: str = "cifar10_gated_resnet20"
    model: str = "gated_resnet20"
    num_classes: int | None = None  # None: from the dataset
    epochs: int = 30
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    eval_every: int = 1  # epochs
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16: CUDA only)
    channels_last: bool = True
    # The training step (batchshaping.fast_step): "auto" captures it in a CUDA graph on CUDA, compiles a
    # long gated run on CPU and runs the rest eagerly; "graph", "compile" and "eager" choose explicitly.
    step: str = "auto"  # auto | eager | compile | graph
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # CPU threads for torch (None: torch's default, one per core)
    # A progress bar on stderr: None (default) draws it only when stderr is a terminal (a log file gets the
    # one line per epoch with its ETA, not a carriage-return update per step); true/false force it.
    progress: bool | None = None
    checkpoint_every: int = 1  # epochs
    # Wall-time limit of this process ("2h30m", "150m", "90s", or seconds): the run stops after the last
    # epoch that fits, judged from its own epoch times, with last.pt written; --resume continues it.
    max_time: float | str | None = None
    # Warm start: a dense checkpoint of this package (best.pt / last.pt), a plain state_dict or a
    # torchvision-named .pth; the gated model takes every backbone weight, only its gates start fresh.
    pretrained: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CHOICES = {
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "step": ("auto", "eager", "compile", "graph"),
    "loss.bs_reduction": ("sum", "mean"),
    "loss.l0_reduction": ("mean", "sum", "macs"),
    "data.dataset": ("cifar10", "imagenet", "cityscapes"),
}


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and gently coerce: int -> float) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, value
        out = []
        for v in value:
            ok, v = _type_ok(v, arg)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, tp), value


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{_suggest(key, prefix)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} is a section; give a mapping, got {value!r}")
            _apply(current, value, f"{path}.")
            continue
        ok, value = _type_ok(value, hints[key])
        if not ok:
            raise ConfigError(f"config key {path!r} expects {_type_name(hints[key])}, got {value!r}")
        if path in _CHOICES and value not in _CHOICES[path]:
            raise ConfigError(f"config key {path!r} must be one of {_CHOICES[path]}, got {value!r}")
        setattr(obj, key, value)


def config_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of :class:`TrainConfig` (``epochs``, ``optim.lr``, ``loss.l0_weight``, ...)."""
    obj = TrainConfig() if obj is None else obj
    keys = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _suggest(key: str, prefix: str) -> str:
    """'; did you mean 'optim.lr'?' for a key that exists in another section, else the valid keys."""
    keys = config_keys()
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    here = sorted(k[len(prefix) :] for k in keys if k.startswith(prefix))
    close = same_leaf or [f"{prefix}{k}" for k in difflib.get_close_matches(key, here, n=3, cutoff=0.75)]
    if close:
        return f"; did you mean {' or '.join(repr(k) for k in close)}?"
    return f"; valid keys here: {', '.join(here)} (sections: data., optim., loss., gate.)"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _yaml_loader() -> Any:
    """A safe YAML loader that reads numbers as people write them: YAML 1.1 takes ``1e-3`` and ``1.0e9``
    (no dot, or no sign in the exponent) for strings, so ``--set loss.l0_weight=1e-3`` would be a string.
    A key written twice in one mapping is an error: YAML keeps the later silently (a second ``loss:``
    section would drop the first)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is written twice; keep one", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    number = re.compile(r"^[-+]?(\d[\d_]*)?\.?\d*([eE][-+]?\d+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", number, list("-+0123456789."))
    return Loader


def _load_yaml(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # noqa: S506  (a SafeLoader subclass)


def _parse_value(text: str) -> Any:
    """Parse a --set value as YAML (numbers, booleans, lists, null); bare words stay strings."""
    import yaml

    try:
        return _load_yaml(text)
    except yaml.YAMLError:
        return text


def resolve_recipe(name: str | Path) -> Path:
    """A recipe given as a path, or by name (``cifar10_gated_resnet32``), or as ``configs/<name>.yaml`` from
    any folder: an existing file wins, then the recipes shipped with the package.
    ConfigError listing the shipped recipes if none matches."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{p.stem if p.suffix in ('.yaml', '.yml') else p.name}.yaml"
    if shipped.is_file() and (p.suffix in ("", ".yaml", ".yml")):
        return shipped
    names = ", ".join(sorted(q.stem for q in RECIPES_DIR.glob("*.yaml")))
    raise ConfigError(f"config {str(name)!r} not found: give a YAML file or a recipe name ({names})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- recipe ``path`` (a YAML file or a recipe name, see :func:`resolve_recipe`) <- ``overrides``
    like ``["epochs=30", "loss.l0_weight=1e-3"]``."""
    import yaml

    cfg = TrainConfig()
    if path is not None:
        p = resolve_recipe(path)
        try:
            data = _load_yaml(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {str(p)!r} must hold a mapping of keys, got {type(data).__name__}"
            )
        data.setdefault("name", p.stem)
        _apply(cfg, _upgrade_saved(data))
    _apply(cfg, parse_overrides(overrides or []))
    validate(cfg)
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.05", "epochs=30"]`` -> ``{"optim": {"lr": 0.05}, "epochs": 30}``."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. epochs=30), got {item!r}")
        key, text = item.split("=", 1)
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key.strip()!r}: {part!r} is set as a value and as a section")
        node[leaf] = _parse_value(text)
    return nested


def update_config(cfg: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """Apply nested ``changes`` (as from :func:`parse_overrides`) to ``cfg`` in place, checked; return it."""
    _apply(cfg, changes)
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with :meth:`TrainConfig.to_dict` (e.g. from a checkpoint)."""
    cfg = TrainConfig()
    _apply(cfg, _upgrade_saved(data))
    validate(cfg)
    return cfg


def _upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config (YAML file, checkpoint) in today's keys: run folders written before the ``step`` key
    hold ``compile: true | false``, which chose the compiled or the eager step, so they load, compare and
    resume as they ran. Command-line overrides take today's keys only."""
    if isinstance(data.get("compile"), bool) and "step" not in data:
        data = dict(data)
        data["step"] = "compile" if data.pop("compile") else "eager"
    return data


def parse_duration(value: float | str) -> float:
    """Seconds of a duration: a number of seconds (9000, "9000") or hours/minutes/seconds ("2h30m", "150m",
    "1h", "90s", "1.5h"). ValueError naming the accepted forms otherwise, or for a duration <= 0."""
    text = str(value).strip().lower()
    m = re.fullmatch(r"(?:(\d+(?:\.\d*)?)h)?\s*(?:(\d+(?:\.\d*)?)m)?\s*(?:(\d+(?:\.\d*)?)s?)?", text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"{value!r} is not a duration; write e.g. 2h30m, 150m, 90s or 9000 (seconds)")
    h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
    seconds = 3600 * h + 60 * mins + secs
    if not seconds > 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


#: Numeric keys and the range each must lie in: (low, high, low inclusive, high inclusive); None: unbounded.
_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "epochs": (1, None, True, True),
    "eval_every": (1, None, True, True),
    "checkpoint_every": (1, None, True, True),
    "threads": (1, None, True, True),
    "num_classes": (1, None, True, True),
    "data.batch_size": (2, None, True, True),
    "data.eval_batch_size": (1, None, True, True),
    "data.workers": (0, None, True, True),
    "data.image_size": (1, None, True, True),
    "data.train_subset": (1, None, True, True),
    "data.test_subset": (1, None, True, True),
    "optim.lr": (0, None, False, True),
    "optim.momentum": (0, 1, True, False),
    "optim.weight_decay": (0, None, True, True),
    "optim.lr_gamma": (0, None, False, True),
    "optim.warmup": (0, 1, True, True),
    "optim.backbone_lr_factor": (0, None, True, True),
    "loss.bs_weight": (0, None, True, True),
    "loss.bs_alpha": (0, None, False, True),
    "loss.bs_beta": (0, None, False, True),
    "loss.bs_end": (0, 1, True, True),
    "loss.l0_weight": (0, None, True, True),
    "loss.l0_start": (0, 1, True, True),
    "loss.l0_end": (0, 1, True, True),
    "loss.macs_target": (0, 1, False, True),
    "loss.macs_weight": (0, None, True, True),
    "gate.hidden": (1, None, True, True),
    "gate.tau": (0, None, False, True),
}

#: Why a key has its range, where the bare interval would not say it.
_RANGE_WHY = {
    "data.batch_size": " (batch-shaping needs a batch)",
    "loss.bs_end": " (a fraction of training)",
    "loss.l0_start": " (a fraction of training)",
    "loss.l0_end": " (a fraction of training)",
    "optim.warmup": " (a fraction of training)",
    "loss.macs_target": " (a fraction of the dense MACs)",
    "loss.bs_weight": " (a negative weight rewards the opposite of the loss)",
    "loss.l0_weight": " (a negative weight rewards the opposite of the loss)",
    "loss.macs_weight": " (a negative weight rewards the opposite of the loss)",
}


def _interval(low: float | None, high: float | None, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _check_range(key: str, value: float) -> None:
    low, high, low_in, high_in = _RANGES[key]
    below = low is not None and (value < low or (value == low and not low_in))
    above = high is not None and (value > high or (value == high and not high_in))
    if below or above or value != value:  # value != value: NaN
        raise ConfigError(
            f"config key {key!r} must be {_interval(low, high, low_in, high_in)}{_RANGE_WHY.get(key, '')}, "
            f"got {value}"
        )


def validate(cfg: TrainConfig) -> None:
    """Cross-field and range checks that a single type check cannot do."""
    for key in _RANGES:
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        if node is not None:
            _check_range(key, node)
    from batchshaping.models import list_models, model_info

    if cfg.model not in list_models():
        close = difflib.get_close_matches(cfg.model, list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(m) for m in close)}? " if close else ""
        raise ConfigError(
            f"config key 'model': unknown model {cfg.model!r}; {hint}known models: {', '.join(list_models())}"
        )
    if cfg.loss.macs_target is not None and not model_info(cfg.model).gated:
        # a dense model's MACs are fixed: the budget could never be met, and its calibration would run away
        raise ConfigError(
            f"config key 'loss.macs_target' needs a gated model; {cfg.model} has no gates: use "
            f"gated_{cfg.model} or drop the target (--set loss.macs_target=null)"
        )
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", cfg.device):
        raise ConfigError(f"config key 'device' must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    milestones = cfg.optim.lr_milestones
    if any(not 0 < m <= 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(
            "config key 'optim.lr_milestones' holds increasing fractions of training in (0, 1] "
            f"(e.g. [0.6, 0.75, 0.9]), got {milestones}"
        )
    if cfg.max_time is not None:
        try:
            parse_duration(cfg.max_time)
        except ValueError as e:
            raise ConfigError(f"config key 'max_time': {e}") from None
    if cfg.loss.l0_end < cfg.loss.l0_start:
        raise ConfigError("config key 'loss.l0_end' must be >= 'loss.l0_start'")


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML text."""
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False)
