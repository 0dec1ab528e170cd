"""Model registry: ``@register`` builders, :func:`create_model`, :func:`list_models`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


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


def register(
    name: str,
    *,
    input_size: tuple[int, int, int],
    num_classes: int,
    gated: bool,
    family: str,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder`` under ``name`` with its default input size and classes."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, builder, input_size, num_classes, gated, family, defaults)
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
    args = {**info.defaults, **kwargs}
    return info.builder(num_classes=info.num_classes if num_classes is None else num_classes, **args)


def list_models(pattern: str = "") -> list[str]:
    """Sorted names of the registered models containing ``pattern``."""
    return sorted(n for n in _REGISTRY if pattern in n)
