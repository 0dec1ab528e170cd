"""How the reports show numbers and names: percentages, MAC counts in a readable unit, data-set names."""

from __future__ import annotations

import math
from collections.abc import Callable

#: Display names of the data sets of ``data.dataset``.
DATASET_NAMES = {"cifar10": "CIFAR-10", "imagenet": "ImageNet", "cityscapes": "Cityscapes"}

#: Formats a MAC count (None: "n/a") in a fixed unit, as :func:`mac_formatter` builds.
MacFormat = Callable[[float | None], str]


def pct(v: float | None, digits: int = 2, suffix: str = "%", missing: str = "n/a") -> str:
    """A fraction as a percentage: ``pct(0.8572) == "85.72%"``; ``missing`` for None, NaN or inf."""
    return missing if v is None or not math.isfinite(v) else f"{100 * v:.{digits}f}{suffix}"


def mac_unit(value: float) -> tuple[float, str]:
    """(divisor, unit) for showing MAC counts of magnitude ``value``: GMACs from 1e9, MMACs from 1e6,
    else kMACs, so numbers stay readable."""
    value = abs(float(value))
    if value >= 1e9:
        return 1e9, "GMACs"
    if value >= 1e6:
        return 1e6, "MMACs"
    return 1e3, "kMACs"


def mac_formatter(dense: float) -> MacFormat:
    """Formatter of MAC counts in the unit that suits ``dense`` ("8.476 MMACs"; "n/a" for None)."""
    div, unit = mac_unit(dense)

    def macs(v: float | None) -> str:
        return "n/a" if v is None else f"{v / div:.3f} {unit}"

    return macs
