"""The numbers of ``analysis.json``, built from one evaluation pass (:class:`PassResult`); nothing here
reads or writes files.

Classification and segmentation share the MAC and gate numbers and the images with the most and the
fewest MACs; they differ in how hard an image was. A classified image is right or wrong, so there are
correct-versus-incorrect and per-class numbers. A segmented image has many classes and no single
prediction, so it gets per-image measures over its labelled pixels instead (pixel accuracy, mean
cross-entropy, mean prediction entropy) and the per-class IoU of the whole set; its analysis carries
``"task": "segmentation"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from batchshaping.analysis.collect import PassResult
from batchshaping.analysis.stats import (
    GATE_CLASSES,
    auc,
    class_fractions,
    extremes,
    gate_classes,
    per_class_means,
    per_layer_counts,
    spearman,
    spearman_interval,
    split_layers,
    summarize,
)
from batchshaping.gates import ALWAYS_OFF, ALWAYS_ON

#: Images listed (and shown) among the most and among the fewest MACs.
GRID_IMAGES = 16
#: Above this many classes, tables and plots show only the CLASSES_AT_EACH_END classes with the most and
#: with the fewest mean MACs (ImageNet's 1000 bars would be unreadable); analysis.json keeps them all.
MAX_CLASSES_SHOWN = 40
CLASSES_AT_EACH_END = 20

#: What the per-image measures of a segmentation analysis are (also stated in its report).
SEGMENTATION_MEASURES = {
    "pixel_acc": "fraction of the image's labelled pixels predicted right",
    "loss": "mean cross-entropy over the image's labelled pixels (nats)",
    "entropy": "mean entropy of the predicted class distribution over the image's labelled pixels (nats)",
}


def is_segmentation(a: dict[str, Any]) -> bool:
    """Whether the analysis dict ``a`` is of a segmentation model."""
    return a.get("task") == "segmentation"


def build_analysis(
    res: PassResult,
    dense: float,
    gate_macs: float,
    class_names: Sequence[str],
    model_name: str,
    data_name: str,
    source: dict[str, Any] | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """All the numbers of analysis.json from one :class:`PassResult` over N images.

    ``dense``: MACs of one image through the dense network; ``gate_macs``: those of the gating modules;
    ``class_names``: K names (classification: K at least the largest label + 1; segmentation: the K
    classes of the per-class IoU); ``precision``: that of the pass, as
    :func:`~batchshaping.runtime.precision_name` names it.
    """
    gated = bool(res.layer_names)
    a: dict[str, Any] = {
        "model": model_name,
        "data": data_name,
        "num_images": res.num_images,
        "source": source or {},
        "precision": precision,
        "gated": gated,
    }
    if res.segmentation:
        a["task"] = "segmentation"
        a |= {k: res.metrics[k] for k in ("miou", "pixel_acc")}
        a["loss_mean"] = res.metrics["test_loss"]  # over all labelled pixels of the set, as `eval` reports
    else:
        a |= {
            "top1": float(res.correct.mean()),
            "top5": res.top5_correct / res.num_images,
            "loss_mean": float(res.loss.mean()),
        }
    a |= _mac_numbers(res.macs, dense, gate_macs)
    if gated:
        a["gates"] = _gate_numbers(res)
    if res.segmentation:
        return a | _segmentation_numbers(res, class_names)
    return a | _classification_numbers(res, class_names)


def _classification_numbers(res: PassResult, class_names: Sequence[str]) -> dict[str, Any]:
    """Rank correlations of MACs with entropy and loss, correct versus incorrect, per class, extremes."""
    most, fewest = extremes(res.macs, GRID_IMAGES, tiebreak=res.entropy)
    rho = {"macs_vs_entropy": spearman(res.macs, res.entropy), "macs_vs_loss": spearman(res.macs, res.loss)}
    a, lo, hi = auc(res.macs, ~res.correct)
    return {
        "spearman": rho,
        "spearman_ci95": {k: list(spearman_interval(v, len(res.macs))) for k, v in rho.items()},
        "correct_vs_incorrect": _correct_vs_incorrect(res),
        # P(a misclassified image gets more MACs than a correct one): 0.5 when compute ignores errors
        "incorrect_more_macs": {"auc": a, "ci95": [lo, hi]},
        "per_class": _per_class(res, class_names),
        "extremes": {
            "most_macs": [_image_record(res, int(i), class_names) for i in most],
            "fewest_macs": [_image_record(res, int(i), class_names) for i in fewest],
        },
    }


def _segmentation_numbers(res: PassResult, class_names: Sequence[str]) -> dict[str, Any]:
    """The per-image measures (summaries and rank correlations with the MACs), the per-class IoU and the
    extremes of a segmentation pass."""
    measures = {"pixel_acc": res.pixel_acc, "entropy": res.entropy, "loss": res.loss}
    ious = res.metrics.get("class_iou", {})
    most, fewest = extremes(res.macs, GRID_IMAGES, tiebreak=np.nan_to_num(res.entropy))
    return {
        "per_image_measures": dict(SEGMENTATION_MEASURES),
        "per_image": {k: _summarize_finite(v) for k, v in measures.items()},
        "spearman": {f"macs_vs_{k}": _spearman_finite(res.macs, v) for k, v in measures.items()},
        "class_iou": [
            {"class": name, "label": i, "iou": ious.get(name)} for i, name in enumerate(class_names)
        ],
        "extremes": {
            "most_macs": [_segmented_image_record(res, int(i)) for i in most],
            "fewest_macs": [_segmented_image_record(res, int(i)) for i in fewest],
        },
    }


def _summarize_finite(values: np.ndarray) -> dict[str, float] | None:
    """:func:`summarize` of the finite values (an image without labelled pixels has NaN measures)."""
    v = values[np.isfinite(values)]
    return summarize(v) if len(v) else None


def _spearman_finite(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`spearman` over the pairs where both values are finite."""
    keep = np.isfinite(a) & np.isfinite(b)
    return spearman(a[keep], b[keep])


def _mac_numbers(macs: np.ndarray, dense: float, gate_macs: float) -> dict[str, Any]:
    """The MAC entries of analysis.json from the per-image conditional MACs (N,)."""
    mean = float(macs.mean())
    return {
        # Same names as summary.json, for scripts that read both.
        "macs_mean": mean,
        "macs_dense": float(dense),
        "mac_ratio": mean / float(dense),
        "macs": {
            "dense": float(dense),
            "gate_modules": float(gate_macs),
            "mean": mean,
            "ratio": mean / float(dense),
            "per_image": summarize(macs),
            "note": "conditional MACs include the gating modules' own MACs; ratio = mean / dense",
        },
    }


def _gate_numbers(res: PassResult) -> dict[str, Any]:
    """analysis.json's "gates": class counts and fractions over all G gates, and one record per gating
    module (its on-rates, mean probabilities and classes, one per gate, and its probability histogram)."""
    counts = per_layer_counts(res.on_rate, res.layer_sizes)
    totals = {c: sum(layer[c] for layer in counts) for c in GATE_CLASSES}
    per_layer = zip(
        res.layer_names,
        res.layer_sizes,
        counts,
        split_layers(res.on_rate, res.layer_sizes),
        split_layers(res.prob_mean, res.layer_sizes),
        split_layers(gate_classes(res.on_rate), res.layer_sizes),
        res.prob_hist,
        strict=True,
    )
    layers = [
        {
            "name": name,
            "gates": size,
            "counts": {c: cnt[c] for c in GATE_CLASSES},
            "fractions": class_fractions(cnt),
            "on_rate_mean": float(rate.mean()),
            "on_rate": [round(float(r), 6) for r in rate],
            "prob_mean": [round(float(p), 6) for p in pm],
            "class": [str(c) for c in kind],
            "prob_hist": [int(h) for h in hist],
        }
        for name, size, cnt, rate, pm, kind, hist in per_layer
    ]
    return {
        "thresholds": {"always_on": f"on-rate > {ALWAYS_ON}", "always_off": f"on-rate < {ALWAYS_OFF}"},
        "total": int(sum(res.layer_sizes)),
        "counts": totals,
        "fractions": class_fractions(totals),
        "on_rate_mean": float(res.on_rate.mean()),
        "prob_hist_bins": len(res.prob_hist[0]),
        "layers": layers,
    }


def _correct_vs_incorrect(res: PassResult) -> dict[str, dict[str, Any]]:
    """Image count, mean MACs and mean entropy of the correctly and the incorrectly classified images
    (None for an empty group)."""
    return {
        name: {
            "images": int(sel.sum()),
            "macs_mean": float(res.macs[sel].mean()) if sel.any() else None,
            "entropy_mean": float(res.entropy[sel].mean()) if sel.any() else None,
        }
        for name, sel in (("correct", res.correct), ("incorrect", ~res.correct))
    }


def _per_class(res: PassResult, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One record per class (K = len(class_names)): image count, top-1 and mean MACs (NaN without images)."""
    k = len(class_names)
    macs_c = per_class_means(res.macs, res.label, k)
    acc_c = per_class_means(res.correct.astype(float), res.label, k)
    count_c = np.bincount(res.label, minlength=k)
    return [
        {
            "class": class_names[i],
            "label": i,
            "images": int(count_c[i]),
            "top1": acc_c[i],
            "macs_mean": macs_c[i],
        }
        for i in range(k)
    ]


def _image_record(res: PassResult, i: int, class_names: Sequence[str]) -> dict[str, Any]:
    """Test-set index, true and predicted class names, MACs and entropy of image ``i``."""
    return {
        "index": i,
        "label": class_names[res.label[i]],
        "pred": class_names[res.pred[i]],
        "macs": float(res.macs[i]),
        "entropy": float(res.entropy[i]),
    }


def _segmented_image_record(res: PassResult, i: int) -> dict[str, Any]:
    """Test-set index, MACs and the per-image measures of segmented image ``i``."""
    return {
        "index": i,
        "macs": float(res.macs[i]),
        "pixel_acc": float(res.pixel_acc[i]),
        "entropy": float(res.entropy[i]),
        "loss": float(res.loss[i]),
    }


def classes_shown(per_class: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """The records of analysis.json's "per_class" that tables and plots show, and a sentence saying which
    when it is not all of them: every class up to MAX_CLASSES_SHOWN, else the CLASSES_AT_EACH_END classes
    with the most mean MACs and those with the fewest (among classes with images), most first."""
    if len(per_class) <= MAX_CLASSES_SHOWN:
        return per_class, None
    seen = [
        c for c in per_class if c["images"] and c["macs_mean"] is not None and math.isfinite(c["macs_mean"])
    ]
    ranked = sorted(seen, key=lambda c: (-c["macs_mean"], c["label"]))
    n = CLASSES_AT_EACH_END
    head = f"{len(per_class)} classes, {len(seen)} with images: shown are "
    tail = ", most first; analysis.json has every class."
    if len(ranked) <= 2 * n:
        return ranked, head + "those, by mean MACs" + tail
    return ranked[:n] + ranked[
        -n:
    ], head + f"the {n} with the most and the {n} with the fewest mean MACs" + tail


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
