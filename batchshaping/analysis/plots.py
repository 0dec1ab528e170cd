"""Matplotlib figures of the analysis: standalone Figures rendered by the Agg canvas (no pyplot, so no
global backend switch and no open figures to leak), cleared after saving.

Every function takes plain arrays, writes one PNG to ``path`` and returns nothing; ``subtitle`` is the
"<model> on <data> (<N> images)" line that every title carries.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchshaping.analysis.formatting import mac_unit
from batchshaping.analysis.stats import ALWAYS_OFF_CLASS, ALWAYS_ON_CLASS, CONDITIONAL_CLASS

# Same colours for the gate classes everywhere.
CLASS_COLORS = {ALWAYS_ON_CLASS: "#4C72B0", CONDITIONAL_CLASS: "#DD8452", ALWAYS_OFF_CLASS: "#B0B0B0"}
CLASS_LABELS = {
    ALWAYS_ON_CLASS: "always on",
    CONDITIONAL_CLASS: "conditional",
    ALWAYS_OFF_CLASS: "always off",
}
DPI = 120


def _subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.0), **kw: Any) -> Any:
    """(figure, axes) like ``pyplot.subplots``, but a standalone Figure on an Agg canvas: no pyplot
    global state (a caller's interactive backend is left alone) and nothing registered that must be closed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "the analysis plots need matplotlib: pip install 'batchshaping[analysis]'"
        ) from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig: Any, path: Path) -> None:
    """The figure as a 256-colour palette PNG: about a third of the RGB file's size (0.78 -> 0.27 MB for
    a report's eight plots), the same to the eye (plots have few colours; the image mosaics are 32x32
    tiles). Reports are committed and copied around, so their size matters."""
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()  # drop the artists now rather than at garbage collection
    rgb = Image.open(buf).convert("RGB")
    rgb.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, format="PNG", optimize=True)


def short_layer_name(name: str) -> str:
    """``"layer1.0.gate"`` -> ``"layer1.0"``: the block a gating module drives."""
    return name.removesuffix(".gate").removesuffix("gate") or name


def gate_classes_per_layer(
    layer_names: Sequence[str], counts: Sequence[dict[str, int]], subtitle: str, path: Path
) -> None:
    """Stacked bars per gating module (L of them): percentages of always-on / conditional / always-off gates.

    counts: L dicts with the gate counts of each class and "total".
    """
    n = len(layer_names)
    fig, ax = _subplots(figsize=(max(6.0, 0.32 * n + 2.5), 4.2))
    x = np.arange(n)
    bottom = np.zeros(n)
    totals = np.array([c["total"] for c in counts], dtype=float)
    for cls in (ALWAYS_ON_CLASS, CONDITIONAL_CLASS, ALWAYS_OFF_CLASS):
        pct = 100 * np.array([c[cls] for c in counts]) / totals
        overall = sum(c[cls] for c in counts) / totals.sum()
        ax.bar(x, pct, bottom=bottom, color=CLASS_COLORS[cls], width=0.8,
               label=f"{CLASS_LABELS[cls]} ({100 * overall:.1f}% of all gates)")  # fmt: skip
        bottom += pct
    ax.set_xticks(x, [short_layer_name(s) for s in layer_names], rotation=90, fontsize=8 if n > 20 else 9)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of the module's gates")
    ax.set_xlabel("gating module (residual block), input to output")
    ax.set_title(f"Gate classes per layer (on > 99% / off < 1% of images)\n{subtitle}")
    # Legend outside the axes: every bar reaches 100%, so there is no free corner inside.
    handles, labels = ax.get_legend_handles_labels()  # reversed: same top-to-bottom order as the stack
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)


def gate_prob_histograms(
    layer_names: Sequence[str],
    prob_hist: np.ndarray,
    counts: Sequence[dict[str, int]],
    subtitle: str,
    path: Path,
) -> None:
    """Ridgeline plot: per gating module (first at the top) the distribution of its gate probabilities
    over all (image, gate) pairs, each ridge scaled to its own maximum.

    prob_hist: (L, B) counts over B equal bins of [0, 1]; counts: L dicts with the gate counts of each
    class. One axes rather than L panels, so that it stays readable for ResNet-110's 54 modules.
    """
    n, bins = prob_hist.shape
    edges = np.linspace(0, 1, bins + 1)
    overlap = 1.6  # ridge height in units of the spacing between ridges
    fig, ax = _subplots(figsize=(7.5, 0.3 * n + 2.0))
    for i in range(n):
        base = n - 1 - i
        h = prob_hist[i] / max(prob_hist[i].max(), 1) * overlap
        # Later (lower) ridges drawn on top, so each ridge's baseline stays visible.
        ax.stairs(base + h, edges, baseline=base, fill=True, color=CLASS_COLORS[CONDITIONAL_CLASS],
                  alpha=0.9, zorder=2 * i)  # fmt: skip
        ax.stairs(base + h, edges, baseline=base, color="#5A3A22", lw=0.8, zorder=2 * i + 1)
    ax.axvline(0.5, color="k", ls=":", lw=1, zorder=2 * n + 2, label="0.5: eval-mode threshold (open above)")
    labels = [
        f"{short_layer_name(name)} ({c['always_on']}/{c['conditional']}/{c['always_off']})"
        for name, c in zip(layer_names, counts, strict=True)
    ]
    ax.set_yticks(np.arange(n)[::-1], labels, fontsize=8 if n <= 30 else 6)
    ax.set_ylim(-0.2, n - 1 + overlap + 0.2)
    ax.set_xlim(0, 1)
    ax.set_xlabel("gate probability sigmoid(logit)")
    ax.set_ylabel("gating module (always on / conditional / always off gates)")
    ax.set_title(
        "Gate probabilities per layer, all (image, gate) pairs; each ridge scaled to its maximum\n"
        + subtitle,
        fontsize=10,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.06 - 3.0 / (0.3 * n + 2.0) / 10), frameon=False,
              fontsize=8)  # fmt: skip
    _save(fig, path)


def macs_histogram(macs: np.ndarray, dense: float, subtitle: str, path: Path) -> None:
    """Distribution of the per-image conditional MACs (N,), mean marked, dense cost in the legend."""
    div, unit = mac_unit(dense)
    fig, ax = _subplots(figsize=(6.4, 4.0))
    m = macs / div
    counts, _, _ = ax.hist(m, bins=_bins(m), color=CLASS_COLORS[ALWAYS_ON_CLASS], alpha=0.85)
    if np.ptp(m) == 0:  # every image costs the same (e.g. all gates always on): show a thin bar
        ax.set_xlim(m[0] * 0.98, m[0] * 1.02 + 1e-9)
    log_y = np.ptp(m) > 0 and counts.max() > 0.5 * len(m)  # one bin dominates: show the tail too
    if log_y:
        ax.set_yscale("log")
    ax.axvline(m.mean(), color="k", ls="--", lw=1.2,
               label=f"mean {m.mean():.2f} {unit} ({macs.mean() / dense:.1%} of dense)")  # fmt: skip
    ax.plot([], [], " ", label=f"dense model {dense / div:.2f} {unit}")
    ax.set_xlabel(f"conditional MACs per image ({unit})")
    ax.set_ylabel("images (log scale)" if log_y else "images")
    ax.set_title(f"Compute per image\n{subtitle}")
    ax.legend(framealpha=0.9)
    _save(fig, path)


def _bins(m: np.ndarray, max_bins: int = 60) -> int | np.ndarray:
    """Histogram bins: one per distinct value when there are few (MACs are discrete), else ``max_bins``."""
    u = np.unique(m)
    if len(u) == 1:
        return np.array([u[0] - 0.5, u[0] + 0.5]) if u[0] == 0 else np.array([u[0] * 0.999, u[0] * 1.001])
    return min(max_bins, len(u))


def macs_correct_incorrect(
    macs: np.ndarray, correct: np.ndarray, dense: float, subtitle: str, path: Path
) -> None:
    """Violins (with quartile boxes) of the MACs (N,) of correctly and incorrectly classified images
    (``correct``: (N,) bool), means marked and given in the legend. Violins rather than overlaid histograms:
    the two groups can differ in size by 10x (a weak model), and a box stays readable for a handful of
    images."""
    div, unit = mac_unit(dense)
    m = macs / div
    fig, ax = _subplots(figsize=(6.4, 4.2))
    groups = [(sel, name, color) for sel, name, color in
              ((correct, "correct", "#55A868"), (~correct, "incorrect", "#C44E52")) if sel.any()]  # fmt: skip
    for pos, (sel, name, color) in enumerate(groups):
        v = m[sel]
        if np.ptp(v) > 0 and len(v) > 1:  # a violin needs spread for its density estimate
            body = ax.violinplot([v], positions=[pos], widths=0.8, showextrema=False)["bodies"][0]
            body.set_facecolor(color)
            body.set_alpha(0.35)
        ax.boxplot([v], positions=[pos], widths=0.15, showfliers=False, patch_artist=True,
                   boxprops=dict(facecolor="white"), medianprops=dict(color="k"))  # fmt: skip
        ax.plot([pos], [v.mean()], marker="D", color=color, ms=8, ls="none",
                label=f"{name}: {sel.sum()} images, mean {v.mean():.3f} {unit}")  # fmt: skip
    ax.set_xticks(range(len(groups)), [f"{name}\n({sel.sum()} images)" for sel, name, _ in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(f"conditional MACs per image ({unit})")
    ax.set_title(f"Compute of correctly vs incorrectly classified images\n{subtitle}")
    ax.legend(title="diamond: mean; box: quartiles and median", fontsize=9, title_fontsize=8,
              loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # fmt: skip
    _save(fig, path)


@dataclass(frozen=True)
class DifficultyPanel:
    """One panel of :func:`macs_vs_difficulty`: a per-image measure (N,) and its Spearman correlation
    with the MACs; the x axis reads "<name> (<unit>)", on a log scale if ``log``."""

    values: np.ndarray
    rho: float
    name: str
    unit: str
    log: bool = False


def macs_vs_difficulty(
    macs: np.ndarray, panels: Sequence[DifficultyPanel], dense: float, subtitle: str, path: Path
) -> None:
    """One hexbin panel per measure: the MACs (N,) against the panel's values (N,; pairs with a NaN are
    left out), titled with the Spearman correlation. Log panels clamp their values to >= 1e-4 (a confident
    correct prediction has a loss of ~0, which a log axis cannot show)."""
    div, unit = mac_unit(dense)
    fig, axes = _subplots(1, len(panels), figsize=(5.75 * len(panels), 4.4), squeeze=False)
    loss_floor = 1e-4
    for ax, panel in zip(axes[0], panels, strict=True):
        keep = np.isfinite(panel.values) & np.isfinite(macs)
        m, x = macs[keep] / div, panel.values[keep]
        xscale = "log" if panel.log else "linear"
        detail = ""
        if panel.log:
            detail = ", log scale" + (f", clamped to >= {loss_floor:g}" if (x < loss_floor).any() else "")
            x = np.maximum(x, loss_floor)
        if np.ptp(m) > 0 and np.ptp(x) > 0:
            hb = ax.hexbin(x, m, gridsize=40, xscale=xscale, mincnt=1, bins="log", cmap="viridis")
            cb = fig.colorbar(hb, ax=ax, label="images per cell")
            _plain_log_ticks(cb.ax.yaxis, *cb.ax.get_ylim())
        else:  # a constant axis has no extent for hexbin
            ax.scatter(x, m, s=4, alpha=0.5)
            ax.set_xscale(xscale)
        if panel.log:
            _plain_log_ticks(ax.xaxis, *ax.get_xlim())
        ax.set_xlabel(f"{panel.name} ({panel.unit}{detail})")
        ax.set_ylabel(f"conditional MACs per image ({unit})")
        ax.set_title(f"Spearman rho = {_fmt_rho(panel.rho)}", fontsize=10)
    fig.suptitle(f"Compute versus difficulty\n{subtitle}", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


#: Multiples of 10^k that may carry a label on a log axis, densest first (then every 1, 2, 3... decades).
_LOG_SUBS = ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 5), (1, 2, 5), (1,))


def _plain_log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Label the log-scaled ``axis`` (view limits lo..hi > 0) with plain numbers ("0.2", "5", "1e-05") at
    the densest of 1..9, 1/2/3/5, 1/2/5, 1 x 10^k (or every few decades) whose labels fit side by side
    without touching (measured in the tick-label font); the other ticks stay unlabelled.

    Matplotlib's default labels minor ticks too when the axis spans about a decade or less, and those
    "2x10^-1" labels run into each other on a narrow panel.
    """
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    horizontal = axis.axis_name == "x"
    font = FontProperties(size=rcParams["xtick.labelsize" if horizontal else "ytick.labelsize"])
    pt = font.get_size_in_points()
    box, (fig_w, fig_h) = axis.axes.get_position(), axis.axes.figure.get_size_inches()
    length = 72 * (box.width * fig_w if horizontal else box.height * fig_h)  # points, before tight_layout

    def extent(v: float) -> float:  # of the label along the axis, in points
        return TextPath((0, 0), f"{v:g}", prop=font).get_extents().width if horizontal else 1.5 * pt

    def fits(t: np.ndarray) -> bool:
        pos = np.log10(t / lo) / np.log10(hi / lo) * length
        ext = np.array([extent(v) for v in t])
        return bool(np.all(np.diff(pos) >= (ext[1:] + ext[:-1]) / 2 + 0.3 * pt))

    lo, hi = sorted((float(lo), float(hi)))
    ticks = np.zeros(0)
    if 0 < lo < hi:
        span = np.log10(hi / lo)
        decades = np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
        candidates = [(subs, 1) for subs in _LOG_SUBS] + [((1,), k) for k in range(2, int(span) + 2)]
        for subs, every in candidates:
            t = np.array([s * 10.0**d for d in decades[decades % every == 0] for s in subs])
            t = t[(t >= lo * (1 - 1e-9)) & (t <= hi * (1 + 1e-9))]
            if len(t) >= 2 and fits(t):
                ticks = t
                break
        if len(ticks) < 2:  # less than a tick per 1..9 step in view: linear steps read fine here
            ticks = MaxNLocator(nbins=3).tick_values(lo, hi)
    if len(ticks) >= 2:
        axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
    axis.set_minor_formatter(NullFormatter())


def _fmt_rho(rho: float) -> str:
    return "n/a (constant input)" if not np.isfinite(rho) else f"{rho:+.3f}"


def macs_per_class(
    class_names: Sequence[str],
    means: np.ndarray,
    accuracy: np.ndarray,
    overall: float,
    dense: float,
    subtitle: str,
    path: Path,
    selection: str | None = None,
) -> None:
    """Bar per class (K of them): mean conditional MACs ``means`` (K,) (NaN: no image), the class's top-1
    ``accuracy`` (K,) written inside the bar's foot (above the bar it would collide with the line of the
    overall mean ``overall``). ``selection`` names the classes shown when they are not all (in the title)."""
    div, unit = mac_unit(dense)
    k = len(class_names)
    fig, ax = _subplots(figsize=(max(6.4, 0.6 * k + 1.5), 4.2))
    x = np.arange(k)
    vals = means / div
    bars = ax.bar(x, np.nan_to_num(vals), color=CLASS_COLORS[ALWAYS_ON_CLASS])
    ax.axhline(overall / div, color="k", ls="--", lw=1, label=f"all images {overall / div:.3f} {unit}")
    finite = vals[np.isfinite(vals)]
    if finite.size:
        lo, hi = finite.min(), finite.max()
        pad = max(hi - lo, 0.02 * hi) * 0.6
        ax.set_ylim(max(0.0, lo - pad), hi + 2 * pad)  # differences between classes are small; zoom in
    bottom, top = ax.get_ylim()
    for b, acc in zip(bars, accuracy, strict=True):
        if np.isfinite(acc) and b.get_height() > bottom:
            ax.text(b.get_x() + b.get_width() / 2, bottom + 0.02 * (top - bottom), f"{100 * acc:.0f}%",
                    ha="center", va="bottom", fontsize=8, color="white", fontweight="bold")  # fmt: skip
    ax.set_xticks(x, class_names, rotation=30 if k <= 20 else 90, ha="right" if k <= 20 else "center")
    ax.set_ylabel(f"mean conditional MACs per image ({unit})")
    ax.set_xlabel("true class (in the bar: top-1 accuracy of the class)")
    shown = f", {selection}" if selection else ""
    ax.set_title(f"Compute per class{shown} (y axis does not start at 0)\n{subtitle}")
    ax.legend(frameon=False, loc="upper right")
    _save(fig, path)


def image_grid(
    images: np.ndarray,
    captions: Sequence[str],
    title: str,
    path: Path,
    highlight: Sequence[bool] | None = None,
    ncols: int = 8,
) -> None:
    """Grid of images (K, C, H, W) -- uint8, or float in [0, 1] -- with a caption over each; captions
    with ``highlight`` set (misclassified images) are red.

    The tiles go into one mosaic drawn by a single imshow (one axes rather than K).
    """
    k = len(images)
    ncols = max(1, min(ncols, k))
    nrows = max(1, -(-k // ncols))
    _, c, h, w = images.shape
    # Pixels between tiles / for the captions. A column is a fixed width in inches and the captions a fixed
    # font size, so the band scales with the tile's width (wide Cityscapes tiles need no less room).
    gap, band = max(1, w // 8), int(round(0.5 * w))
    cell_w, cell_h = w + gap, h + band
    canvas = np.ones((nrows * cell_h, ncols * cell_w - gap, 3))
    fig_w = 1.45 * ncols
    fig, ax = _subplots(figsize=(fig_w, fig_w * canvas.shape[0] / canvas.shape[1] + 0.6))
    for i in range(k):
        img = np.asarray(images[i])
        img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else np.clip(img, 0, 1)
        img = np.repeat(img, 3, axis=0) if c == 1 else img[:3]
        r, col = divmod(i, ncols)
        y0, x0 = r * cell_h + band, col * cell_w
        canvas[y0 : y0 + h, x0 : x0 + w] = img.transpose(1, 2, 0)
        red = highlight is not None and highlight[i]
        ax.text(x0 + w / 2, y0 - 0.5, captions[i], ha="center", va="bottom", fontsize=7,
                color="#C44E52" if red else "k")  # fmt: skip
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


# Compare plot: one style per kind of run.
KIND_STYLE = {
    "dense": dict(color="k", marker="s"),
    "batch-shaping": dict(color="#C44E52", marker="o"),
    "L0 only": dict(color="#4C72B0", marker="^"),
    "gated, no sparsity loss": dict(color="#8172B2", marker="D"),
    "gated (loss unknown)": dict(color="#937860", marker="v"),
}


def accuracy_vs_macs(rows: Sequence[dict[str, Any]], title: str, path: Path) -> None:
    """The paper's CIFAR-10 figure: top-1 against MACs, dense runs as a curve, gated runs as points.

    rows: dicts with "kind" (a KIND_STYLE key), "label", "macs" and "top1" (fraction).
    """
    div, unit = mac_unit(max(r["macs"] for r in rows))
    fig, ax = _subplots(figsize=(8.5, 5.0))
    xs = np.array([r["macs"] / div for r in rows])
    ys = np.array([100 * r["top1"] for r in rows])
    # Label placement: each label's box is estimated in points from the data span (margins of 0.2 / 0.12
    # below, ~6 x 4 inch axes, ~4.8 pt per character at fontsize 8); a label takes the first offset whose
    # box overlaps no label placed before it, so long labels of nearby points do not print over each other.
    span = np.array([max(np.ptp(xs), 1e-9), max(np.ptp(ys), 1e-9)])
    pt_per_unit = np.array([6.0 * 72 / 1.4, 4.0 * 72 / 1.24]) / span  # points per data unit (x, y)
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(5, 4), (5, -11), (-5, 4), (-5, -11), (5, 15), (5, -22), (-5, 15), (-5, -22)]
    for kind, style in KIND_STYLE.items():
        sel = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["macs"])
        if not sel:
            continue
        x = [r["macs"] / div for r in sel]
        y = [100 * r["top1"] for r in sel]
        dense = kind == "dense"
        # Gated kinds other than batch-shaping get hollow markers: coincident points stay visible.
        face = style["color"] if kind in ("dense", "batch-shaping") else "none"
        ax.plot(x, y, ls="-" if dense else "none", ms=8, mew=1.8, mfc=face, zorder=3 if dense else 4,
                label="dense ResNets (curve)" if dense else kind, **style)  # fmt: skip
        for r, xi, yi in zip(sel, x, y, strict=True):
            px, py = xi * pt_per_unit[0], yi * pt_per_unit[1]
            width = 4.8 * len(r["label"])
            for dx, dy in offsets:
                x0 = px + dx if dx > 0 else px + dx - width
                box = (x0, py + dy, x0 + width, py + dy + 9)
                hit = (box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed)
                if not any(hit):
                    break
            placed.append(box)
            ax.annotate(r["label"], (xi, yi), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                        color=style["color"], ha="left" if dx > 0 else "right")  # fmt: skip
    ax.set_xlabel(f"mean MACs per image ({unit})")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.margins(x=0.2, y=0.12)
    _save(fig, path)


def late_top1_range(
    runs: Sequence[dict[str, Any]], start: float, below: float = 2.0
) -> tuple[float, float] | None:
    """The top-1 range (%) of :func:`training_curves`' zoom panel: from ``below`` points under the best final
    top-1 of the runs (runs that end lower fall off the bottom) up to the highest top-1 any run reached at or
    after fraction ``start`` of its schedule, plus a tenth of a point. None without evaluations."""
    finals, late = [], []
    for r in runs:
        evals = [e for e in r["log"] if "top1" in e]
        if evals:
            finals.append(100 * evals[-1]["top1"])
            late += [100 * e["top1"] for e in evals if e["epoch"] / r["epochs"] >= start]
    if not finals:
        return None
    top = max(late, default=max(finals))
    return max(finals) - below, top + 0.1


def training_curves(
    runs: Sequence[dict[str, Any]], reference_macs: float, title: str, path: Path, zoom_from: float = 0.6
) -> None:
    """Test top-1 and mean MACs of runs over training, against the fraction of each run's schedule (so a
    36-epoch run and a 500-epoch run of the same recipe shape line up), and below them the top-1 from
    fraction ``zoom_from`` on (the paper's schedule drops the learning rate at 0.6), magnified: on the full
    scale the final points of runs within a point of each other overlap.

    runs: dicts with "label", "epochs" (the run's total), "log" (log.jsonl records; those with "top1" are
    drawn), and optionally "style" (matplotlib line keywords, e.g. {"ls": "--"}). reference_macs: the MACs
    that the middle panel's ratio divides by (e.g. ResNet-20's).
    """
    fig, (top, bottom, zoom) = _subplots(3, 1, figsize=(8.0, 9.5), gridspec_kw={"height_ratios": [3, 2, 2]})
    bottom.sharex(top)
    top.tick_params(labelbottom=False)  # the middle panel's axis below says it
    for r in runs:
        evals = [e for e in r["log"] if "top1" in e]
        if not evals:
            continue
        t = [e["epoch"] / r["epochs"] for e in evals]
        style = {"lw": 1.4, **r.get("style", {})}
        (line,) = top.plot(t, [100 * e["top1"] for e in evals], label=r["label"], **style)
        style["color"] = line.get_color()  # the same colour in every panel
        bottom.plot(t, [e["macs_mean"] / reference_macs for e in evals], **style)
        late = [(x, 100 * e["top1"]) for x, e in zip(t, evals, strict=True) if x >= zoom_from]
        if late:
            zoom.plot(*zip(*late, strict=True), **style)
    top.set_ylabel("test top-1 (%)")
    top.set_title(title)
    bottom.axhline(1.0, color="k", lw=0.8, ls=":")
    bottom.set_ylabel("mean MACs / ResNet-20's")
    bottom.set_xlabel("fraction of the run's schedule (epoch / total epochs)")
    zoom.set_xlim(zoom_from, 1.0 + 0.02 * (1.0 - zoom_from))
    limits = late_top1_range(runs, zoom_from)
    if limits is not None:
        zoom.set_ylim(*limits)
    zoom.set_ylabel("test top-1 (%), magnified")
    zoom.set_xlabel(f"fraction of the run's schedule, from {zoom_from:g} (after the first lr drop)")
    for ax in (top, bottom, zoom):
        ax.grid(alpha=0.3)
    top.legend(loc="lower right", fontsize=8)
    _save(fig, path)
