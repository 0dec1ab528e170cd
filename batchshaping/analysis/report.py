"""``batchshaping analyze``: gate statistics, compute versus difficulty, plots, ``report.md`` and
``analysis.json`` for one checkpoint, from a single pass over the test set."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from batchshaping.analysis import plots
from batchshaping.analysis.collect import PassResult, collect
from batchshaping.analysis.stats import (
    ALWAYS_OFF_CLASS,
    ALWAYS_ON_CLASS,
    CONDITIONAL_CLASS,
    GATE_CLASSES,
    class_fractions,
    extremes,
    gate_classes,
    per_class_means,
    per_layer_counts,
    spearman,
    split_layers,
    summarize,
)
from batchshaping.gates import ALWAYS_OFF, ALWAYS_ON

#: Images shown in each of the most-/fewest-MACs grids.
GRID_IMAGES = 16

DATASET_NAMES = {"cifar10": "CIFAR-10", "imagenet": "ImageNet", "cityscapes": "Cityscapes"}

PLOT_FILES = {
    "gate_classes": "gate_classes_per_layer.png",
    "gate_probs": "gate_prob_hist.png",
    "macs_hist": "macs_hist.png",
    "macs_correct": "macs_correct_vs_incorrect.png",
    "macs_difficulty": "macs_vs_entropy_loss.png",
    "macs_per_class": "macs_per_class.png",
    "most_macs": "images_most_macs.png",
    "fewest_macs": "images_fewest_macs.png",
}


def prepare_out(out: str | os.PathLike[str]) -> Path:
    """Create the output folder and check that a file can be written there.

    Raises PermissionError naming the folder when it cannot be created (e.g. its parent is a regular
    file) or written (the CLI turns it into a one-line error).
    """
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass  # os.access is not enough: root ignores mode bits, read-only mounts do not
    except OSError as e:
        raise PermissionError(
            f"output folder {str(path)!r} cannot be created or written ({e.strerror or e}); "
            "pass another --out"
        ) from None
    return path


def analyze_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
    *,
    test_data: tuple[Tensor, Tensor] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    data_name: str | None = None,
    batch_size: int = 500,
    make_plots: bool = True,
) -> dict[str, Any]:
    """Analyse a checkpoint (a .pt file or a run folder) on a test set; write plots, report.md and
    analysis.json (plus per_image.npz) into ``out``. Returns the content of analysis.json.

    The test set is CIFAR-10's (from ``data_dir``, then the checkpoint's data.root, $BATCHSHAPING_DATA,
    ./data/cifar10), normalised as in training. ``test_data=(x, y)`` replaces it -- x (N, C, H, W) uint8
    (or float in [0, 1]), y (N,) int64 -- with ``mean``/``std`` (default: the statistics of x), class
    names ``classes`` and a name ``data_name`` for titles. ``max_images`` keeps the first N images.

    Raises CheckpointError (missing/corrupt checkpoint), PermissionError (``out`` not writable) and
    DataError (CIFAR-10 not found).
    """
    from batchshaping.checkpoint import load_checkpoint, load_model
    from batchshaping.config import ConfigError

    if max_images is not None and max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {max_images}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(checkpoint)
    model, cfg = load_model(checkpoint, map_location=device)
    out_path = prepare_out(out)  # before the data load and the pass: fail fast
    if test_data is None:
        from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10, resolve_data_dir

        if cfg.data.dataset != "cifar10":
            raise ConfigError(
                f"analyze reads the CIFAR-10 test set; this checkpoint was trained on {cfg.data.dataset!r}"
            )
        data = load_cifar10(resolve_data_dir(data_dir or cfg.data.root))
        x, y = data.x_test, data.y_test
        mean, std = mean or CIFAR10_MEAN, std or CIFAR10_STD
        classes = classes or data.classes
        data_name = data_name or "CIFAR-10 test"
    else:
        x, y = (torch.as_tensor(t) for t in test_data)
        data_name = data_name or f"{DATASET_NAMES.get(cfg.data.dataset, cfg.data.dataset)}-like test data"
    if max_images is not None:
        x, y = x[:max_images], y[:max_images]
    source = {
        "checkpoint": str(checkpoint),
        "epoch": int(ckpt["epoch"]),
        "epochs": cfg.epochs,
        "config": cfg.name,
        "loss": {"bs_weight": cfg.loss.bs_weight, "l0_weight": cfg.loss.l0_weight},
    }
    return analyze_model(
        model, x, y, out_path, mean=mean, std=std, classes=classes, model_name=cfg.model,
        data_name=data_name, batch_size=batch_size, source=source, make_plots=make_plots,
    )  # fmt: skip


def analyze_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    out: str | os.PathLike[str],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    model_name: str = "model",
    data_name: str = "test data",
    batch_size: int = 500,
    source: dict[str, Any] | None = None,
    make_plots: bool = True,
) -> dict[str, Any]:
    """Analyse ``model`` (any device; evaluated in eval mode, fp32, its weights moved to channels_last)
    on images x (N, C, H, W) uint8 or float in [0, 1] and labels y (N,); write the outputs into ``out``.
    Returns the analysis.json dict.

    ``mean``/``std`` normalise x as in training (default: the per-channel statistics of x).
    ``make_plots=False`` writes the numbers (analysis.json, per_image.npz, a report without figures) only.
    """
    from batchshaping.data import TensorLoader
    from batchshaping.macs import MacCounter

    t0 = time.perf_counter()
    out = prepare_out(out)
    x, y = torch.as_tensor(x), torch.as_tensor(y).long()
    if len(x) == 0:
        raise ValueError("the test data is empty")
    if mean is None or std is None:
        xf = x.float() / (255.0 if x.dtype == torch.uint8 else 1.0)
        mean, std = xf.mean((0, 2, 3)).tolist(), xf.std((0, 2, 3)).clamp_min(1e-6).tolist()
    device = next(model.parameters()).device
    # channels_last: ~30% less CPU time for these convs (oneDNN), as training's default; gates unchanged.
    model.to(memory_format=torch.channels_last)
    loader = TensorLoader(x, y, batch_size, False, device, mean, std, channels_last=True)
    counter = MacCounter(model, tuple(x.shape[1:]))
    res = collect(model, loader, counter)
    t_pass = time.perf_counter() - t0

    num_classes = max(res.num_classes, int(res.label.max()) + 1)
    if classes is not None and len(classes) >= num_classes:
        names = list(classes)[:num_classes]
    else:
        names = [f"class {i}" for i in range(num_classes)]
    analysis = build_analysis(res, counter.dense, counter.gate_macs, names, model_name, data_name, source)
    t1 = time.perf_counter()
    written = write_plots(res, analysis, x, out) if analysis["gated"] and make_plots else {}
    analysis["plots"] = written
    t_plots = time.perf_counter() - t1
    np.savez_compressed(
        out / "per_image.npz",
        label=res.label,
        pred=res.pred,
        loss=res.loss,
        entropy=res.entropy,
        macs=res.macs,
    )
    analysis["timing_s"] = {
        "pass": round(t_pass, 3),
        "plots": round(t_plots, 3),
        "total": round(time.perf_counter() - t0, 3),
    }
    (out / "analysis.json").write_text(json.dumps(_clean(analysis), indent=2) + "\n")
    (out / "report.md").write_text(render_report(analysis))
    return _clean(analysis)


def build_analysis(
    res: PassResult,
    dense: float,
    gate_macs: float,
    class_names: Sequence[str],
    model_name: str,
    data_name: str,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All the numbers of analysis.json from one :class:`PassResult` (no files are written)."""
    n = res.num_images
    correct = res.correct
    gated = bool(res.layer_names)
    k = len(class_names)
    a: dict[str, Any] = {
        "model": model_name,
        "data": data_name,
        "num_images": n,
        "source": source or {},
        "gated": gated,
        "top1": float(correct.mean()),
        "top5": res.top5_correct / n,
        "loss_mean": float(res.loss.mean()),
        # Same names as summary.json, for scripts that read both.
        "macs_mean": float(res.macs.mean()),
        "macs_dense": float(dense),
        "mac_ratio": float(res.macs.mean() / dense),
        "macs": {
            "dense": float(dense),
            "gate_modules": float(gate_macs),
            "mean": float(res.macs.mean()),
            "ratio": float(res.macs.mean() / dense),
            "per_image": summarize(res.macs),
            "note": "conditional MACs include the gating modules' own MACs; ratio = mean / dense",
        },
    }
    if gated:
        counts = per_layer_counts(res.on_rate, res.layer_sizes)
        totals = {c: sum(layer[c] for layer in counts) for c in GATE_CLASSES}
        cls = gate_classes(res.on_rate)
        layers = []
        for name, size, cnt, rate, pm, kind, hist in zip(
            res.layer_names,
            res.layer_sizes,
            counts,
            split_layers(res.on_rate, res.layer_sizes),
            split_layers(res.prob_mean, res.layer_sizes),
            split_layers(cls, res.layer_sizes),
            res.prob_hist,
            strict=True,
        ):
            layers.append(
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
            )
        a["gates"] = {
            "thresholds": {"always_on": f"on-rate > {ALWAYS_ON}", "always_off": f"on-rate < {ALWAYS_OFF}"},
            "total": int(sum(res.layer_sizes)),
            "counts": totals,
            "fractions": class_fractions(totals),
            "on_rate_mean": float(res.on_rate.mean()),
            "prob_hist_bins": len(res.prob_hist[0]),
            "layers": layers,
        }
    a["spearman"] = {
        "macs_vs_entropy": spearman(res.macs, res.entropy),
        "macs_vs_loss": spearman(res.macs, res.loss),
    }
    a["correct_vs_incorrect"] = {
        name: {
            "images": int(sel.sum()),
            "macs_mean": float(res.macs[sel].mean()) if sel.any() else None,
            "entropy_mean": float(res.entropy[sel].mean()) if sel.any() else None,
        }
        for name, sel in (("correct", correct), ("incorrect", ~correct))
    }
    macs_c = per_class_means(res.macs, res.label, k)
    acc_c = per_class_means(correct.astype(float), res.label, k)
    count_c = np.bincount(res.label, minlength=k)
    a["per_class"] = [
        {
            "class": class_names[i],
            "label": i,
            "images": int(count_c[i]),
            "top1": acc_c[i],
            "macs_mean": macs_c[i],
        }
        for i in range(k)
    ]
    most, fewest = extremes(res.macs, GRID_IMAGES, tiebreak=res.entropy)
    a["extremes"] = {
        "most_macs": [_image_record(res, int(i), class_names) for i in most],
        "fewest_macs": [_image_record(res, int(i), class_names) for i in fewest],
    }
    return a


def _image_record(res: PassResult, i: int, class_names: Sequence[str]) -> dict[str, Any]:
    return {
        "index": i,
        "label": class_names[res.label[i]],
        "pred": class_names[res.pred[i]],
        "macs": float(res.macs[i]),
        "entropy": float(res.entropy[i]),
    }


def write_plots(res: PassResult, a: dict[str, Any], x: Tensor, out: Path) -> dict[str, str]:
    """Write the PNGs of a gated model's analysis into ``out``; returns {plot key: file name}."""
    sub = f"{a['model']} on {a['data']} ({a['num_images']} images)"
    dense = a["macs"]["dense"]
    layers = a["gates"]["layers"]
    counts = [layer["counts"] | {"total": layer["gates"]} for layer in layers]
    f = {k: out / v for k, v in PLOT_FILES.items()}
    plots.gate_classes_per_layer(res.layer_names, counts, sub, f["gate_classes"])
    plots.gate_prob_histograms(res.layer_names, res.prob_hist, counts, sub, f["gate_probs"])
    plots.macs_histogram(res.macs, dense, sub, f["macs_hist"])
    plots.macs_correct_incorrect(res.macs, res.correct, dense, sub, f["macs_correct"])
    rho = a["spearman"]
    plots.macs_vs_difficulty(
        res.macs, res.entropy, res.loss, rho["macs_vs_entropy"], rho["macs_vs_loss"], dense, sub,
        f["macs_difficulty"],
    )  # fmt: skip
    pc = a["per_class"]
    plots.macs_per_class(
        [c["class"] for c in pc],
        np.array([c["macs_mean"] for c in pc], dtype=float),
        np.array([c["top1"] for c in pc], dtype=float),
        a["macs"]["mean"],
        dense,
        sub,
        f["macs_per_class"],
    )
    div, unit = plots.mac_unit(dense)
    for key, what in (("most_macs", "most"), ("fewest_macs", "fewest")):
        recs = a["extremes"][key]
        imgs = x[[r["index"] for r in recs]].cpu().numpy()
        captions = [
            f"#{r['index']} {r['label']}\n{'ok' if r['label'] == r['pred'] else 'pred ' + r['pred']}"
            f"\n{r['macs'] / div:.2f} {unit}"
            for r in recs
        ]
        wrong = [r["label"] != r["pred"] for r in recs]
        plots.image_grid(
            imgs,
            captions,
            f"The {len(recs)} images with the {what} MACs (red: misclassified)\n{sub}",
            f[key],
            highlight=wrong,
        )
    return {k: v.name for k, v in f.items()}


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def render_report(a: dict[str, Any]) -> str:
    """report.md for the analysis dict ``a`` (as built by :func:`build_analysis` plus "plots")."""
    a = _clean(a)
    div, unit = plots.mac_unit(a["macs"]["dense"])
    m = a["macs"]
    src = a.get("source") or {}

    def macs(v: float | None) -> str:
        return "n/a" if v is None else f"{v / div:.3f} {unit}"

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
    if src.get("loss") and a["gated"]:
        lines.append(
            f"| loss weights | batch-shaping {src['loss']['bs_weight']}, L0 {src['loss']['l0_weight']} |"
        )
    lines += [
        f"| top-1 / top-5 | {_pct(a['top1'])} / {_pct(a['top5'])} |",
        f"| mean test loss | {a['loss_mean']:.4f} |",
        f"| dense MACs per image | {macs(m['dense'])} |",
    ]
    if a["gated"]:
        lines.append(f"| mean conditional MACs per image | {macs(m['mean'])} ({m['ratio']:.3f} of dense) |")
    if a["gated"]:
        g = a["gates"]
        fr = g["fractions"]
        lines += [
            f"| gating modules / gates | {len(g['layers'])} / {g['total']} |",
            f"| gates always on / conditional / always off | {_pct(fr[ALWAYS_ON_CLASS])} / "
            f"{_pct(fr[CONDITIONAL_CLASS])} / {_pct(fr[ALWAYS_OFF_CLASS])} |",
        ]
    note = " with eval-mode (deterministic) gates; conditional MACs include the gating modules' own MACs"
    lines += ["", "Evaluated in fp32" + (note if a["gated"] else "") + ".", ""]
    if not a["gated"]:
        lines += [
            "## Gates",
            "",
            f"**This model has no gates** (a dense network): every image costs the same {macs(m['dense'])}, "
            "so there are no gate statistics and no compute-per-image plots.",
            "",
        ]
        lines += _per_class_table(a, macs)
        return "\n".join(lines) + "\n"

    p = a.get("plots") or {}
    g = a["gates"]

    def fig(key: str, alt: str) -> list[str]:
        return [f"![{alt}]({p[key]})", ""] if key in p else []

    lines += [
        "## Gates",
        "",
        f"A gate is *always on* when it is open for more than {100 * ALWAYS_ON:g}% of the images, "
        f"*always off* below {100 * ALWAYS_OFF:g}%, *conditional* otherwise. Mean on-rate over all gates: "
        f"{g['on_rate_mean']:.3f}.",
        "",
        *fig("gate_classes", "gate classes per layer"),
        "| gating module | gates | always on | conditional | always off | mean on-rate |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for layer in g["layers"]:
        c = layer["counts"]
        lines.append(
            f"| {layer['name']} | {layer['gates']} | {c[ALWAYS_ON_CLASS]} | {c[CONDITIONAL_CLASS]} | "
            f"{c[ALWAYS_OFF_CLASS]} | {layer['on_rate_mean']:.3f} |"
        )
    lines += [
        "",
        "### Gate probabilities",
        "",
        "Distribution of sigmoid(logit) over all (image, gate) pairs of each module. Batch-shaping pushes it "
        "towards a U shape (gates mostly near 0 or 1, decided per image).",
        "",
        *fig("gate_probs", "gate probability histograms"),
        "## Compute per image",
        "",
        f"Conditional MACs per image: mean {macs(m['per_image']['mean'])}, "
        f"std {macs(m['per_image']['std'])}, "
        f"min {macs(m['per_image']['min'])}, median {macs(m['per_image']['median'])}, "
        f"max {macs(m['per_image']['max'])} (dense {macs(m['dense'])}).",
        "",
        *fig("macs_hist", "MACs histogram"),
    ]
    ci = a["correct_vs_incorrect"]
    lines += [
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
    rho = a["spearman"]

    def r(v: float | None) -> str:
        return "n/a (constant)" if v is None else f"{v:+.3f}"

    lines += [
        "",
        *fig("macs_correct", "MACs of correct and incorrect images"),
        "### Compute versus difficulty",
        "",
        f"Spearman rank correlation of the per-image MACs with the prediction entropy: "
        f"**{r(rho['macs_vs_entropy'])}**; with the loss: **{r(rho['macs_vs_loss'])}** "
        "(positive: harder images get more compute).",
        "",
        *fig("macs_difficulty", "MACs versus entropy and loss"),
    ]
    lines += _per_class_table(a, macs)
    lines += [
        *fig("macs_per_class", "MACs per class"),
        "## Images with the most and the fewest MACs",
        "",
        "Caption: test-set index and true class; `ok` or the wrong prediction; MACs. Images with equal MACs "
        "are ordered by prediction entropy (most uncertain first among the most MACs, most certain first "
        "among the fewest).",
        "",
        "Test-set indices, most MACs first: "
        + ", ".join(f"#{e['index']}" for e in a["extremes"]["most_macs"]),
        "",
        "Fewest MACs first: " + ", ".join(f"#{e['index']}" for e in a["extremes"]["fewest_macs"]),
        "",
        *fig("most_macs", "images with the most MACs"),
        *fig("fewest_macs", "images with the fewest MACs"),
    ]
    return "\n".join(lines)


def _per_class_table(a: dict[str, Any], macs: Any) -> list[str]:
    lines = [
        "## Per class",
        "",
        "| class | images | top-1 | mean MACs |",
        "|---|---:|---:|---:|",
    ]
    for c in a["per_class"]:
        lines.append(f"| {c['class']} | {c['images']} | {_pct(c['top1'])} | {macs(c['macs_mean'])} |")
    return [*lines, ""]
