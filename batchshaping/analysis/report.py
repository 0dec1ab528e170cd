"""``batchshaping analyze``: gate statistics, compute versus difficulty, plots, ``report.md`` and
``analysis.json`` for one checkpoint, from a single pass over the test set."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from batchshaping.config import TrainConfig

#: Images shown in each of the most-/fewest-MACs grids.
GRID_IMAGES = 16

#: Formats a MAC count (None: "n/a") in a fixed unit, as :func:`_mac_formatter` builds.
MacFormat = Callable[[float | None], str]

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
) -> list[Path]:
    """Analyse a checkpoint (a .pt file or a run folder) on a test set; write plots, report.md and
    analysis.json (plus per_image.npz) into ``out``.

    Returns the paths written, under ``out``: report.md first, then the PNGs (none for a dense model or
    with ``make_plots=False``), analysis.json and per_image.npz (:func:`describe_outputs` makes a line of
    them for the command line).

    The test set is CIFAR-10's (from ``data_dir``, then the checkpoint's data.root, $BATCHSHAPING_DATA,
    ./data/cifar10), normalised as in training. ``test_data=(x, y)`` replaces it -- x (N, C, H, W) uint8
    (or float in [0, 1]), y (N,) int64 -- with ``mean``/``std`` (C,) (default: the statistics of x), class
    names ``classes`` and a name ``data_name`` for titles. ``max_images`` keeps the first N images.

    Raises CheckpointError (missing/corrupt checkpoint), PermissionError (``out`` not writable) and
    DataError (CIFAR-10 not found).
    """
    from batchshaping.checkpoint import load_checkpoint, model_from_checkpoint
    from batchshaping.config import ConfigError

    if max_images is not None and max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {max_images}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(checkpoint)  # on the CPU: the optimizer state need not visit the GPU
    model, cfg = model_from_checkpoint(ckpt, device)
    source = {
        "checkpoint": str(checkpoint),
        "epoch": int(ckpt["epoch"]),
        "epochs": cfg.epochs,
        "config": cfg.name,
        "loss": {"bs_weight": cfg.loss.bs_weight, "l0_weight": cfg.loss.l0_weight},
    }
    del ckpt
    out_path = prepare_out(out)  # before the data load and the pass: fail fast
    if test_data is None:
        from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD

        x, y, cifar_classes = _cifar10_test(cfg, data_dir)
        mean, std = mean or CIFAR10_MEAN, std or CIFAR10_STD
        classes = classes or cifar_classes
        data_name = data_name or "CIFAR-10 test"
    else:
        x, y = (torch.as_tensor(t) for t in test_data)
        data_name = data_name or f"{DATASET_NAMES.get(cfg.data.dataset, cfg.data.dataset)}-like test data"
    if max_images is not None:
        x, y = x[:max_images], y[:max_images]
    analysis = analyze_model(
        model, x, y, out_path, mean=mean, std=std, classes=classes, model_name=cfg.model,
        data_name=data_name, batch_size=batch_size, source=source, make_plots=make_plots,
    )  # fmt: skip
    return written_files(out_path, analysis)


def _cifar10_test(
    cfg: TrainConfig, data_dir: str | os.PathLike[str] | None
) -> tuple[Tensor, Tensor, list[str]]:
    """CIFAR-10's test images (10000, 3, 32, 32) uint8, labels (10000,) and class names, for a checkpoint
    trained on CIFAR-10 (ConfigError otherwise)."""
    from batchshaping.config import ConfigError
    from batchshaping.data import load_cifar10, resolve_data_dir

    if cfg.data.dataset != "cifar10":
        raise ConfigError(
            f"analyze reads the CIFAR-10 test set; this checkpoint was trained on {cfg.data.dataset!r}"
        )
    data = load_cifar10(resolve_data_dir(data_dir or cfg.data.root))
    return data.x_test, data.y_test, list(data.classes)


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
    on images x (N, C, H, W) uint8 or float in [0, 1] and labels y (N,); write the outputs into ``out``
    (the files :func:`written_files` lists). Returns the analysis.json dict.

    ``mean``/``std`` (C,) normalise x as in training (default: the per-channel statistics of x).
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
        mean, std = _channel_stats(x)
    device = next(model.parameters()).device
    # channels_last as in training (faster convolutions on CPU); the gates' decisions do not change.
    model.to(memory_format=torch.channels_last)
    loader = TensorLoader(x, y, batch_size, False, device, mean, std, channels_last=True)
    counter = MacCounter(model, tuple(x.shape[1:]))
    res = collect(model, loader, counter)
    t_pass = time.perf_counter() - t0

    names = _class_names(res, classes)
    analysis = build_analysis(res, counter.dense, counter.gate_macs, names, model_name, data_name, source)
    t1 = time.perf_counter()
    analysis["plots"] = write_plots(res, analysis, x, out) if analysis["gated"] and make_plots else {}
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
    analysis = _clean(analysis)
    (out / "analysis.json").write_text(json.dumps(analysis, indent=2) + "\n")
    (out / "report.md").write_text(render_report(analysis))
    return analysis


def written_files(out: str | os.PathLike[str], analysis: dict[str, Any]) -> list[Path]:
    """The files :func:`analyze_model` wrote into ``out`` for ``analysis``: report.md first, then the PNGs
    of analysis["plots"] (none for a dense model or without plots), analysis.json and per_image.npz."""
    out = Path(out)
    plot_paths = [out / name for name in analysis["plots"].values()]
    return [out / "report.md", *plot_paths, out / "analysis.json", out / "per_image.npz"]


def _channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (each C floats) of images x (N, C, H, W), uint8 read as [0, 255]."""
    xf = x.float() / (255.0 if x.dtype == torch.uint8 else 1.0)
    return xf.mean((0, 2, 3)).tolist(), xf.std((0, 2, 3)).clamp_min(1e-6).tolist()


def _class_names(res: PassResult, classes: Sequence[str] | None) -> list[str]:
    """One name per class (K of them: the model's outputs, or more if a label is larger): ``classes`` if
    it has enough names, else "class 0", "class 1", ..."""
    num_classes = max(res.num_classes, int(res.label.max()) + 1)
    if classes is not None and len(classes) >= num_classes:
        return list(classes)[:num_classes]
    return [f"class {i}" for i in range(num_classes)]


def describe_outputs(paths: Sequence[str | os.PathLike[str]]) -> str:
    """One line for the command line from the paths :func:`analyze_checkpoint` or
    :func:`batchshaping.analysis.compare_runs` returned: ``"wrote reports/r32/report.md (+ 8 plots,
    analysis.json, per_image.npz)"``."""
    first, *rest = (Path(p) for p in paths)
    pngs = sum(p.suffix == ".png" for p in rest)
    others = [p.name for p in rest if p.suffix != ".png"]
    extra = ([f"{pngs} plot{'s' if pngs != 1 else ''}"] if pngs else []) + others
    return f"wrote {first}" + (f" (+ {', '.join(extra)})" if extra else "")


def build_analysis(
    res: PassResult,
    dense: float,
    gate_macs: float,
    class_names: Sequence[str],
    model_name: str,
    data_name: str,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All the numbers of analysis.json from one :class:`PassResult` over N images (no files are written).

    ``dense``: MACs of one image through the dense network; ``gate_macs``: those of the gating modules;
    ``class_names``: K names, K at least the largest label + 1.
    """
    gated = bool(res.layer_names)
    a: dict[str, Any] = {
        "model": model_name,
        "data": data_name,
        "num_images": res.num_images,
        "source": source or {},
        "gated": gated,
        "top1": float(res.correct.mean()),
        "top5": res.top5_correct / res.num_images,
        "loss_mean": float(res.loss.mean()),
        **_mac_numbers(res.macs, dense, gate_macs),
    }
    if gated:
        a["gates"] = _gate_numbers(res)
    a["spearman"] = {
        "macs_vs_entropy": spearman(res.macs, res.entropy),
        "macs_vs_loss": spearman(res.macs, res.loss),
    }
    a["correct_vs_incorrect"] = _correct_vs_incorrect(res)
    a["per_class"] = _per_class(res, class_names)
    most, fewest = extremes(res.macs, GRID_IMAGES, tiebreak=res.entropy)
    a["extremes"] = {
        "most_macs": [_image_record(res, int(i), class_names) for i in most],
        "fewest_macs": [_image_record(res, int(i), class_names) for i in fewest],
    }
    return a


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


def write_plots(res: PassResult, a: dict[str, Any], x: Tensor, out: Path) -> dict[str, str]:
    """Write the PNGs of a gated model's analysis ``a`` (from :func:`build_analysis`) into ``out``.

    res: the pass over the N images x (N, C, H, W), uint8 or float in [0, 1] (the image grids show them).
    Returns {plot key: file name}, in the order of PLOT_FILES.
    """
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
    macs = _mac_formatter(a["macs"]["dense"])
    lines = _summary_section(a, macs)
    if not a["gated"]:
        return "\n".join([*lines, *_no_gates_section(a, macs), *_per_class_section(a, macs)]) + "\n"
    figs = a.get("plots") or {}
    lines += [
        *_gates_section(a, figs),
        *_compute_section(a, macs, figs),
        *_correct_vs_incorrect_section(a, macs, figs),
        *_difficulty_section(a, figs),
        *_per_class_section(a, macs),
        *_figure(figs, "macs_per_class", "MACs per class"),
        *_extremes_section(a, figs),
    ]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def _mac_formatter(dense: float) -> MacFormat:
    """Formatter of MAC counts in the unit that suits ``dense`` ("8.476 MMACs"; "n/a" for None)."""
    div, unit = plots.mac_unit(dense)

    def macs(v: float | None) -> str:
        return "n/a" if v is None else f"{v / div:.3f} {unit}"

    return macs


def _figure(figs: dict[str, str], key: str, alt: str) -> list[str]:
    """Markdown lines of the plot ``key`` of ``figs`` ({plot key: file name}), none if it was not drawn."""
    return [f"![{alt}]({figs[key]})", ""] if key in figs else []


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
        lines.append(
            f"| loss weights | batch-shaping {src['loss']['bs_weight']}, L0 {src['loss']['l0_weight']} |"
        )
    lines += [
        f"| top-1 / top-5 | {_pct(a['top1'])} / {_pct(a['top5'])} |",
        f"| mean test loss | {a['loss_mean']:.4f} |",
        f"| dense MACs per image | {macs(m['dense'])} |",
    ]
    if gated:
        g, fr = a["gates"], a["gates"]["fractions"]
        lines += [
            f"| mean conditional MACs per image | {macs(m['mean'])} ({m['ratio']:.3f} of dense) |",
            f"| gating modules / gates | {len(g['layers'])} / {g['total']} |",
            f"| gates always on / conditional / always off | {_pct(fr[ALWAYS_ON_CLASS])} / "
            f"{_pct(fr[CONDITIONAL_CLASS])} / {_pct(fr[ALWAYS_OFF_CLASS])} |",
        ]
    note = " with eval-mode (deterministic) gates; conditional MACs include the gating modules' own MACs"
    return [*lines, "", "Evaluated in fp32" + (note if gated else "") + ".", ""]


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
    return [*lines, "", *_figure(figs, "macs_correct", "MACs of correct and incorrect images")]


def _difficulty_section(a: dict[str, Any], figs: dict[str, str]) -> list[str]:
    """Rank correlations of the per-image MACs with the entropy and the loss."""
    rho = a["spearman"]

    def r(v: float | None) -> str:
        return "n/a (constant)" if v is None else f"{v:+.3f}"

    return [
        "### Compute versus difficulty",
        "",
        f"Spearman rank correlation of the per-image MACs with the prediction entropy: "
        f"**{r(rho['macs_vs_entropy'])}**; with the loss: **{r(rho['macs_vs_loss'])}** "
        "(positive: harder images get more compute).",
        "",
        *_figure(figs, "macs_difficulty", "MACs versus entropy and loss"),
    ]


def _per_class_section(a: dict[str, Any], macs: MacFormat) -> list[str]:
    """Image count, top-1 and mean MACs of each class."""
    lines = [
        "## Per class",
        "",
        "| class | images | top-1 | mean MACs |",
        "|---|---:|---:|---:|",
    ]
    for c in a["per_class"]:
        lines.append(f"| {c['class']} | {c['images']} | {_pct(c['top1'])} | {macs(c['macs_mean'])} |")
    return [*lines, ""]


def _extremes_section(a: dict[str, Any], figs: dict[str, str]) -> list[str]:
    """Test-set indices and grids of the images with the most and the fewest MACs."""
    ex = a["extremes"]
    return [
        "## Images with the most and the fewest MACs",
        "",
        "Caption: test-set index and true class; `ok` or the wrong prediction; MACs. Images with equal MACs "
        "are ordered by prediction entropy (most uncertain first among the most MACs, most certain first "
        "among the fewest).",
        "",
        "Test-set indices, most MACs first: " + ", ".join(f"#{e['index']}" for e in ex["most_macs"]),
        "",
        "Fewest MACs first: " + ", ".join(f"#{e['index']}" for e in ex["fewest_macs"]),
        "",
        *_figure(figs, "most_macs", "images with the most MACs"),
        *_figure(figs, "fewest_macs", "images with the fewest MACs"),
    ]
