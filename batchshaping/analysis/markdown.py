"""report.md: Markdown text from the numbers of analysis.json (and the plot files it lists); no
computation beyond formatting and nothing read or written."""

from __future__ import annotations

from typing import Any

from batchshaping.analysis.figures import left_out_plots
from batchshaping.analysis.formatting import MacFormat, mac_formatter, pct
from batchshaping.analysis.numbers import classes_shown, is_segmentation, json_safe
from batchshaping.analysis.stats import ALWAYS_OFF_CLASS, ALWAYS_ON_CLASS, CONDITIONAL_CLASS
from batchshaping.gates import ALWAYS_OFF, ALWAYS_ON

#: Plot keys of left-out plots -> how the report names them.
PLOT_TITLES = {
    "macs_correct": "MACs of correct versus incorrect images",
    "macs_per_class": "MACs per class",
}


def render_report(a: dict[str, Any]) -> str:
    """report.md for the analysis dict ``a`` (as built by
    :func:`~batchshaping.analysis.numbers.build_analysis`, plus "plots": {plot key: file name})."""
    a = json_safe(a)
    macs = mac_formatter(a["macs"]["dense"])
    segmentation = is_segmentation(a)
    per_class = _class_iou_section(a) if segmentation else _per_class_section(a, macs)
    lines = _summary_section(a, macs)
    if not a["gated"]:
        return "\n".join([*lines, *_no_gates_section(a, macs), *per_class]) + "\n"
    figs = a.get("plots") or {}
    lines += [*_gates_section(a, figs), *_compute_section(a, macs, figs)]
    if segmentation:
        lines += _segmentation_difficulty_section(a, figs)
    else:
        lines += [*_correct_vs_incorrect_section(a, macs, figs), *_difficulty_section(a, figs)]
    lines += [*per_class, *_figure(figs, "macs_per_class", "MACs per class"), *_left_out_section(a)]
    return "\n".join([*lines, *_extremes_section(a, figs)])


def _figure(figs: dict[str, str], key: str, alt: str) -> list[str]:
    """Markdown lines of the plot ``key`` of ``figs`` ({plot key: file name}), none if it was not drawn."""
    return [f"![{alt}]({figs[key]})", ""] if key in figs else []


def _rho(v: float | None) -> str:
    return "n/a (constant)" if v is None else f"{v:+.3f}"


def _summary_section(a: dict[str, Any], macs: MacFormat) -> list[str]:
    """Title, the table of headline numbers and the evaluation note."""
    m, src, gated = a["macs"], a.get("source") or {}, a["gated"]
    lines = [
        f"# Analysis of {a['model']} on {a['data']} ({a['num_images']} images)",
        "",
        "| | |",
        "|---|---|",
    ]
    if src.get("checkpoint"):
        lines.append(
            f"| checkpoint | `{src['checkpoint']}` (epoch {src.get('epoch')} of {src.get('epochs')}) |"
        )
    if src.get("loss") and gated:
        loss = src["loss"]
        budget = loss.get("macs_target")  # absent in analysis.json files written before the MAC target
        target = "" if budget is None else f", MAC target {budget} (weight {loss['macs_weight']})"
        lines.append(f"| loss weights | batch-shaping {loss['bs_weight']}, L0 {loss['l0_weight']}{target} |")
    if is_segmentation(a):
        lines += [
            f"| mIoU / pixel accuracy | {pct(a['miou'])} / {pct(a['pixel_acc'])} |",
            f"| mean test loss per labelled pixel | {a['loss_mean']:.4f} |",
        ]
    else:
        lines += [
            f"| top-1 / top-5 | {pct(a['top1'])} / {pct(a['top5'])} |",
            f"| mean test loss | {a['loss_mean']:.4f} |",
        ]
    lines.append(f"| dense MACs per image | {macs(m['dense'])} |")
    if gated:
        g, fr = a["gates"], a["gates"]["fractions"]
        lines += [
            f"| mean conditional MACs per image | {macs(m['mean'])} ({m['ratio']:.3f} of dense) |",
            f"| gating modules / gates | {len(g['layers'])} / {g['total']} |",
            f"| gates always on / conditional / always off | {pct(fr[ALWAYS_ON_CLASS])} / "
            f"{pct(fr[CONDITIONAL_CLASS])} / {pct(fr[ALWAYS_OFF_CLASS])} |",
        ]
    note = " with eval-mode (deterministic) gates; conditional MACs include the gating modules' own MACs"
    return [*lines, "", f"Evaluated in {a['precision']}" + (note if gated else "") + ".", ""]


def _no_gates_section(a: dict[str, Any], macs: MacFormat) -> list[str]:
    """The "Gates" section of a dense model."""
    return [
        "## Gates",
        "",
        f"**This model has no gates** (a dense network): every image costs the same "
        f"{macs(a['macs']['dense'])}, so there are no gate statistics and no compute-per-image plots.",
        "",
    ]


def _gates_section(a: dict[str, Any], figs: dict[str, str]) -> list[str]:
    """Gate classes per gating module (a table of counts) and the gate-probability histograms."""
    g = a["gates"]
    lines = [
        "## Gates",
        "",
        f"A gate is *always on* when it is open for more than {100 * ALWAYS_ON:g}% of the images, "
        f"*always off* below {100 * ALWAYS_OFF:g}%, *conditional* otherwise. Mean on-rate over all gates: "
        f"{g['on_rate_mean']:.3f}.",
        "",
        *_figure(figs, "gate_classes", "gate classes per layer"),
        "| gating module | gates | always on | conditional | always off | mean on-rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for layer in g["layers"]:
        c = layer["counts"]
        lines.append(
            f"| {layer['name']} | {layer['gates']} | {c[ALWAYS_ON_CLASS]} | {c[CONDITIONAL_CLASS]} | "
            f"{c[ALWAYS_OFF_CLASS]} | {layer['on_rate_mean']:.3f} |"
        )
    return [
        *lines,
        "",
        "### Gate probabilities",
        "",
        "Distribution of sigmoid(logit) over all (image, gate) pairs of each module. Batch-shaping pushes it "
        "towards a U shape (gates mostly near 0 or 1, decided per image).",
        "",
        *_figure(figs, "gate_probs", "gate probability histograms"),
    ]


def _compute_section(a: dict[str, Any], macs: MacFormat, figs: dict[str, str]) -> list[str]:
    """Summary of the per-image conditional MACs and their histogram."""
    m, pi = a["macs"], a["macs"]["per_image"]
    return [
        "## Compute per image",
        "",
        f"Conditional MACs per image: mean {macs(pi['mean'])}, std {macs(pi['std'])}, "
        f"min {macs(pi['min'])}, median {macs(pi['median'])}, max {macs(pi['max'])} "
        f"(dense {macs(m['dense'])}).",
        "",
        *_figure(figs, "macs_hist", "MACs histogram"),
    ]


def _correct_vs_incorrect_section(a: dict[str, Any], macs: MacFormat, figs: dict[str, str]) -> list[str]:
    """Mean MACs and entropy of the correctly and the incorrectly classified images."""
    ci = a["correct_vs_incorrect"]
    lines = [
        "### Correct versus incorrect",
        "",
        "| | images | mean MACs | mean entropy (nats) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("correct", "incorrect"):
        e = ci[name]["entropy_mean"]
        lines.append(
            f"| {name} | {ci[name]['images']} | {macs(ci[name]['macs_mean'])} | "
            f"{'n/a' if e is None else f'{e:.3f}'} |"
        )
    auc = a.get("incorrect_more_macs")
    if auc is not None and auc["auc"] is not None:
        lo, hi = auc["ci95"]
        lines += [
            "",
            f"A misclassified image gets more MACs than a correctly classified one in "
            f"**{100 * auc['auc']:.1f}%** of the pairs (ties count half; 95% CI {100 * lo:.1f}-"
            f"{100 * hi:.1f}%; 50%: compute does not follow errors).",
        ]
    return [*lines, "", *_figure(figs, "macs_correct", "MACs of correct and incorrect images")]


def _difficulty_section(a: dict[str, Any], figs: dict[str, str]) -> list[str]:
    """Rank correlations of the per-image MACs with the entropy and the loss."""
    rho, ci = a["spearman"], a.get("spearman_ci95", {})

    def with_ci(key: str) -> str:
        lo, hi = ci.get(key) or (None, None)
        return f"**{_rho(rho[key])}**" + ("" if lo is None else f" (95% CI {lo:+.3f} to {hi:+.3f})")

    return [
        "### Compute versus difficulty",
        "",
        f"Spearman rank correlation of the per-image MACs with the prediction entropy: "
        f"{with_ci('macs_vs_entropy')}; with the loss: {with_ci('macs_vs_loss')} "
        "(positive: harder images get more compute).",
        "",
        *_figure(figs, "macs_difficulty", "MACs versus entropy and loss"),
    ]


def _segmentation_difficulty_section(a: dict[str, Any], figs: dict[str, str]) -> list[str]:
    """What the per-image measures of a segmented image are, their summaries and their rank correlations
    with the MACs."""
    rho, per_image, what = a["spearman"], a["per_image"], a["per_image_measures"]
    names = {"pixel_acc": "pixel accuracy", "entropy": "mean entropy", "loss": "mean cross-entropy"}
    lines = [
        "### Compute versus difficulty",
        "",
        "A segmented image is not right or wrong as a whole, so its difficulty is measured over its labelled "
        "pixels, at the label's resolution: "
        + "; ".join(f"*{names[k]}*: {what[k]}" for k in names)
        + ". Images without labelled pixels are left out of these numbers.",
        "",
        "| per-image measure | mean | min | median | max | Spearman rho with the MACs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, name in names.items():
        s = per_image[k] or {}
        cells = [f"{s[q]:.4f}" if s.get(q) is not None else "n/a" for q in ("mean", "min", "median", "max")]
        lines.append(f"| {name} | {' | '.join(cells)} | {_rho(rho[f'macs_vs_{k}'])} |")
    return [
        *lines,
        "",
        "Positive rho with the entropy or the loss, negative with the pixel accuracy: harder images get more "
        "compute.",
        "",
        *_figure(figs, "macs_difficulty", "MACs versus pixel accuracy, entropy and loss"),
    ]


def _per_class_section(a: dict[str, Any], macs: MacFormat) -> list[str]:
    """Image count, top-1 and mean MACs of each class (of a selection when there are many)."""
    shown, note = classes_shown(a["per_class"])
    lines = ["## Per class", "", *([note, ""] if note else [])]
    lines += ["| class | images | top-1 | mean MACs |", "|---|---:|---:|---:|"]
    for c in shown:
        lines.append(f"| {c['class']} | {c['images']} | {pct(c['top1'])} | {macs(c['macs_mean'])} |")
    return [*lines, ""]


def _class_iou_section(a: dict[str, Any]) -> list[str]:
    """The IoU of each class over the whole set (segmentation)."""
    lines = [
        "## Per class",
        "",
        "IoU of each class over all the images' labelled pixels (n/a: the class is neither in the labels nor "
        "in the predictions).",
        "",
        "| class | IoU |",
        "|---|---:|",
    ]
    lines += [f"| {c['class']} | {pct(c['iou'])} |" for c in a["class_iou"]]
    return [*lines, ""]


def _left_out_section(a: dict[str, Any]) -> list[str]:
    """The plots the task leaves out, one bullet each saying why."""
    left_out = left_out_plots(a)
    if not left_out:
        return []
    return [
        "Not drawn for this task:",
        "",
        *(f"- {PLOT_TITLES[k]}: {why}." for k, why in left_out.items()),
        "",
    ]


def _extremes_section(a: dict[str, Any], figs: dict[str, str]) -> list[str]:
    """Test-set indices and grids of the images with the most and the fewest MACs."""
    ex = a["extremes"]
    if is_segmentation(a):
        caption = "Caption: test-set index; pixel accuracy; MACs."
        caption += " Images with equal MACs are ordered by their mean prediction entropy"
    else:
        caption = "Caption: test-set index and true class; `ok` or the wrong prediction; MACs."
        caption += " Images with equal MACs are ordered by prediction entropy"
    caption += " (most uncertain first among the most MACs, most certain first among the fewest)."
    return [
        "## Images with the most and the fewest MACs",
        "",
        caption,
        "",
        "Test-set indices, most MACs first: " + ", ".join(f"#{e['index']}" for e in ex["most_macs"]),
        "",
        "Fewest MACs first: " + ", ".join(f"#{e['index']}" for e in ex["fewest_macs"]),
        "",
        *_figure(figs, "most_macs", "images with the most MACs"),
        *_figure(figs, "fewest_macs", "images with the fewest MACs"),
    ]
