"""Model registry: builders decorated with :func:`register_model`, :func:`create_model`, :func:`list_models`,
and :func:`model_from_config` (the model a training config names)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

if TYPE_CHECKING:  # config imports models.blocks, so importing it here at run time would be circular
    from batchshaping.config import TrainConfig

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model: its builder and its default input."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    num_classes: int
    gated: bool
    family: str
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *, input_size: tuple[int, int, int], gated: bool, family: str, **defaults: Any
) -> Callable[[Builder], Builder]:
    """Decorator: register a builder under its function name, with its default input size (C, H, W).

    The default number of classes is the builder's own ``num_classes`` default, so the two cannot disagree.
    ``defaults`` are keyword arguments that :func:`create_model` passes to the builder unless overridden.
    """

    def wrap(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        num_classes = inspect.signature(builder).parameters.get("num_classes")
        if num_classes is None or not isinstance(num_classes.default, int):
            raise TypeError(f"builder {name!r} needs a parameter num_classes: int = <default>")
        _REGISTRY[name] = ModelInfo(name, builder, input_size, num_classes.default, gated, family, defaults)
        return builder

    return wrap


def model_info(name: str) -> ModelInfo:
    """Registry entry of ``name``; ValueError listing the known names if there is none."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("gated_resnet32", num_classes=10)``.

    kwargs go to the builder (e.g. ``gate=GateConfig(tau=0.5)``, ``shortcut="B"``).
    """
    info = model_info(name)
    if "pretrained" in kwargs:  # timm's habit: say where weights come from here instead of a TypeError
        raise ValueError(
            f"create_model({name!r}) takes no pretrained=: it builds the network untrained; load weights "
            "with batchshaping.load_model(<a checkpoint of batchshaping train, e.g. weights/cifar10/*.pt>) "
            "or batchshaping.load_pretrained(model, <a torchvision ResNet .pth or a state_dict>)"
        )
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int (classifier outputs), got {num_classes!r}")
    args = {**info.defaults, **kwargs}
    return info.builder(num_classes=info.num_classes if num_classes is None else num_classes, **args)


def model_from_config(cfg: TrainConfig, num_classes: int | None = None) -> nn.Module:
    """The registry model named by ``cfg.model`` (with ``cfg.gate`` for gated models), with ``num_classes``
    classes, else ``cfg.num_classes``, else the model's default."""
    kwargs: dict[str, Any] = {"gate": cfg.gate} if model_info(cfg.model).gated else {}
    return create_model(cfg.model, num_classes=num_classes or cfg.num_classes, **kwargs)


def list_models(pattern: str = "") -> list[str]:
    """Sorted names of the registered models containing ``pattern``."""
    return sorted(n for n in _REGISTRY if pattern in n)
