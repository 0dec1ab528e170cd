"""Loss-weight and learning-rate schedules as functions of training progress t in [0, 1]."""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def linear_decay(t: float, start_value: float, end: float) -> float:
    """start_value at t = 0, decreasing linearly to 0 at t = end, then 0 (batch-shaping)."""
    if end <= 0:
        return 0.0
    return start_value * max(0.0, 1.0 - t / end)


def linear_ramp(t: float, final_value: float, start: float, end: float) -> float:
    """0 until t = start, rising linearly to final_value at t = end, then constant (L0)."""
    if t <= start:
        return 0.0
    if t >= end or end <= start:
        return final_value
    return final_value * (t - start) / (end - start)


def step_lr(
    t: float, base_lr: float, milestones: Sequence[float], gamma: float, warmup: float = 0.0
) -> float:
    """base_lr * gamma^(number of milestones passed), with an optional linear warm-up over [0, warmup]."""
    lr = base_lr * gamma ** bisect.bisect_right(sorted(milestones), t)
    if warmup > 0 and t < warmup:
        lr *= t / warmup
    return lr
