"""Pure statistics of a gated network over a test set: gate classes, per-layer counts, rank correlations,
per-class means and MAC summaries. Inputs are plain tensors/arrays so every number can be checked by hand.

Gate classes follow the paper (and :data:`batchshaping.gates.ALWAYS_ON` / ``ALWAYS_OFF``): a gate that is
open for more than 99% of the test images is *always on*, one open for less than 1% is *always off*, every
other gate is *conditional*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from torch import Tensor

from batchshaping.gates import ALWAYS_OFF, ALWAYS_ON

ALWAYS_ON_CLASS, ALWAYS_OFF_CLASS, CONDITIONAL_CLASS = "always_on", "always_off", "conditional"
#: Order used in tables, JSON and stacked bars.
GATE_CLASSES = (ALWAYS_ON_CLASS, ALWAYS_OFF_CLASS, CONDITIONAL_CLASS)

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _np(a: ArrayLike) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def gate_classes(
    on_rate: ArrayLike, always_on: float = ALWAYS_ON, always_off: float = ALWAYS_OFF
) -> np.ndarray:
    """Class of each gate from its on-rate (G,): ``"always_on"`` (rate > always_on), ``"always_off"``
    (rate < always_off) or ``"conditional"``. Returns a (G,) array of those strings."""
    r = _np(on_rate).astype(np.float64).reshape(-1)
    out = np.full(r.shape, CONDITIONAL_CLASS, dtype=object)
    out[r > always_on] = ALWAYS_ON_CLASS
    out[r < always_off] = ALWAYS_OFF_CLASS
    return out.astype(str)


def split_layers(values: ArrayLike, layer_sizes: Sequence[int]) -> list[np.ndarray]:
    """Split a per-gate vector (G,) -- or the last axis of (N, G) -- into one chunk per gating module."""
    v = _np(values)
    if v.shape[-1] != sum(layer_sizes):
        raise ValueError(
            f"{v.shape[-1]} gates but the layer sizes {list(layer_sizes)} sum to {sum(layer_sizes)}"
        )
    return np.split(v, np.cumsum(layer_sizes)[:-1], axis=-1)


def per_layer_counts(
    on_rate: ArrayLike,
    layer_sizes: Sequence[int],
    always_on: float = ALWAYS_ON,
    always_off: float = ALWAYS_OFF,
) -> list[dict[str, int]]:
    """Number of always-on / always-off / conditional gates in each gating module.

    on_rate: (G,) with G = sum(layer_sizes), the modules' gates concatenated in network order.
    Returns one dict per module: {"always_on", "always_off", "conditional", "total"}.
    """
    classes = gate_classes(on_rate, always_on, always_off)
    out = []
    for chunk in split_layers(classes, layer_sizes):
        counts = {c: int((chunk == c).sum()) for c in GATE_CLASSES}
        out.append({**counts, "total": len(chunk)})
    return out


def class_fractions(counts: dict[str, int]) -> dict[str, float]:
    """{"always_on", "always_off", "conditional"} counts -> fractions of the total (they sum to 1)."""
    total = sum(counts[c] for c in GATE_CLASSES)
    return {c: counts[c] / total if total else 0.0 for c in GATE_CLASSES}


def rankdata(a: ArrayLike) -> np.ndarray:
    """1-based ranks of a 1-D array, ties getting their average rank (scipy's ``rankdata`` default)."""
    x = _np(a).astype(np.float64).reshape(-1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # sorted position (1-based) of the last member of each tie group
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation of two (N,) arrays: Pearson correlation of their average ranks.

    NaN when either array is constant (e.g. the MACs of a dense model) or N < 2, as scipy returns.
    """
    x, y = _np(a).reshape(-1), _np(b).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"spearman needs arrays of the same length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"a confidence level lies in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def spearman_interval(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Spearman correlation ``rho`` of ``n`` pairs: Fisher's z with the standard
    error of Bonett & Wright (2000), ``sqrt((1 + rho^2 / 2) / (n - 3))``, which holds for rank
    correlations where Fisher's ``1 / sqrt(n - 3)`` is too narrow. (nan, nan) for a NaN rho or n < 4."""
    if not math.isfinite(rho) or n < 4:
        return float("nan"), float("nan")
    z = math.atanh(min(max(rho, -1 + 1e-12), 1 - 1e-12))
    half = _z(level) * math.sqrt((1 + rho * rho / 2) / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def auc(values: ArrayLike, positive: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """How often a positive's value exceeds a negative's: the probability that ``values`` (N,) of a random
    positive (``positive`` (N,) bools) is larger than that of a random negative, ties counting half (the
    area under the ROC curve, Mann-Whitney's U / (n_pos * n_neg)); 0.5: no relation. Returns (auc, low,
    high) with the confidence interval of Hanley & McNeil (1982); all NaN when a group is empty.
    """
    v = _np(values).astype(np.float64).reshape(-1)
    pos = _np(positive).astype(bool).reshape(-1)
    if len(v) != len(pos):
        raise ValueError(f"auc needs values and labels of the same length, got {len(v)} and {len(pos)}")
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan"), float("nan"), float("nan")
    u = rankdata(v)[pos].sum() - n1 * (n1 + 1) / 2
    a = float(u / (n1 * n0))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a), 0.0) / (n1 * n0))
    half = _z(level) * se
    return a, max(a - half, 0.0), min(a + half, 1.0)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test of two classifiers on the same images: ``only_a`` images only the first
    gets right, ``only_b`` only the second. Under equal accuracy each discordant image is a fair coin, so the
    p-value is the binomial probability of a split at least this uneven; 1.0 without discordant images."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts are >= 0, got {only_a} and {only_b}")
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    # exact integers: the tail sum over 2^n, correctly rounded by int / int even for n in the thousands
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def paired_accuracy(a: ArrayLike, b: ArrayLike, level: float = 0.95) -> dict[str, float | int]:
    """Accuracy of classifier A minus that of B on the same images, from per-image correctness ``a``, ``b``
    (N,) bools: ``diff`` (a fraction) with its confidence interval ``low``, ``high`` by Agresti & Min (2005;
    the Wald interval of the matched-pairs difference after adding 1/2 to each of the four cells, which
    keeps its coverage near the nominal level where the plain Wald interval falls short), the counts
    ``n``, ``both``, ``only_a``, ``only_b``, ``neither``, and ``p``: the exact McNemar p-value
    (:func:`mcnemar_exact`). The interval covers only the sampling of the test images: seed-to-seed variation
    of training comes on top."""
    x, y = _np(a).astype(bool).reshape(-1), _np(b).astype(bool).reshape(-1)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"paired_accuracy needs two non-empty arrays of one length, got {len(x)} and {len(y)}"
        )
    n = len(x)
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    both = int((x & y).sum())
    m = n + 2  # four cells, + 1/2 each
    d = (only_a - only_b) / m
    var = ((only_a + only_b + 1) - (only_a - only_b) ** 2 / m) / m**2
    half = _z(level) * math.sqrt(max(var, 0.0))
    return {
        "n": n,
        "both": both,
        "only_a": only_a,
        "only_b": only_b,
        "neither": n - both - only_a - only_b,
        "diff": (only_a - only_b) / n,
        "low": max(d - half, -1.0),
        "high": min(d + half, 1.0),
        "p": mcnemar_exact(only_a, only_b),
    }


def per_class_means(values: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Mean of ``values`` (N,) over the images of each class: labels (N,) ints -> (num_classes,) float64,
    NaN for a class without images."""
    v = _np(values).astype(np.float64).reshape(-1)
    y = _np(labels).astype(np.int64).reshape(-1)
    sums = np.bincount(y, weights=v, minlength=num_classes)[:num_classes]
    counts = np.bincount(y, minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def summarize(values: ArrayLike) -> dict[str, float]:
    """Mean, std, min, 5/25/50/75/95th percentiles and max of a (N,) array."""
    v = _np(values).astype(np.float64).reshape(-1)
    q = np.percentile(v, [5, 25, 50, 75, 95])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "p5": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "p95": float(q[4]),
        "max": float(v.max()),
    }


def extremes(values: ArrayLike, k: int, tiebreak: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` largest and the ``k`` smallest values of (N,), largest/smallest first.

    Many images share a MAC count (e.g. every gate open), so ties are broken by ``tiebreak`` (N,) in the
    same direction (largest first among the largest, smallest first among the smallest), then by index.
    """
    v = _np(values).astype(np.float64).reshape(-1)
    t = np.zeros_like(v) if tiebreak is None else _np(tiebreak).astype(np.float64).reshape(-1)
    k = min(k, len(v))
    idx = np.arange(len(v))
    # np.lexsort sorts by the last key first.
    return np.lexsort((idx, -t, -v))[:k], np.lexsort((idx, t, v))[:k]
