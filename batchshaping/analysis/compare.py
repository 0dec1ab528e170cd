"""``batchshaping compare``: accuracy versus MACs across finished run folders (the paper's CIFAR-10 figure),
with a markdown table ``compare.md`` and ``compare.json``; with ``paired``, each run's top-1 against a
reference run's on the same test images (difference, its confidence interval, McNemar's test)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from batchshaping.analysis import plots
from batchshaping.analysis.formatting import DATASET_NAMES, mac_unit, pct
from batchshaping.analysis.outputs import prepare_out
from batchshaping.analysis.stats import paired_accuracy
from batchshaping.config import ConfigError
from batchshaping.tasks import top_classes

PLOT_FILE = "accuracy_vs_macs.png"
#: Test-set sizes when a run used the whole test split (data.test_subset = None).
FULL_TEST_SIZE = {"cifar10": 10000, "imagenet": 50000, "cityscapes": 500}
_REQUIRED = ("top1", "macs_mean", "macs_dense")


def load_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """One row of the comparison from a run folder written by ``batchshaping train``.

    Reads summary.json (required) and config.yaml (optional: without it the loss weights, and so the
    batch-shaping / L0-only distinction, are unknown). Raises FileNotFoundError for a missing folder or
    summary.json and ConfigError for an unreadable one.
    """
    from batchshaping.config import load_config

    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"run folder {str(d)!r} not found")
    sp = d / "summary.json"
    if not sp.is_file():
        raise FileNotFoundError(
            f"{str(d)!r} has no summary.json, so it is not a finished run folder of `batchshaping train` "
            "(summary.json is written when training ends)"
        )
    try:
        s = json.loads(sp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(sp)!r} is not valid JSON ({e})") from None
    missing = [k for k in _REQUIRED if not isinstance(s.get(k), int | float)]
    if missing or not isinstance(s.get("model"), str):
        raise ConfigError(f"{str(sp)!r} lacks {missing or ['model']}; was the run evaluated at the end?")
    cfg = load_config(d / "config.yaml") if (d / "config.yaml").is_file() else None
    model = s["model"]
    loss = cfg.loss if cfg else None
    kind = (
        run_kind(model, loss.bs_weight, loss.l0_weight, loss.macs_target)
        if loss
        else run_kind(model, None, None)
    )
    dataset = cfg.data.dataset if cfg else "cifar10"
    test_images = (cfg.data.test_subset if cfg else None) or FULL_TEST_SIZE.get(dataset)
    gated = kind != "dense"
    return {
        "run": str(d),
        "model": model,
        "kind": kind,
        "dataset": dataset,
        "test_images": test_images,
        "top1": float(s["top1"]),
        "macs": float(s["macs_mean"]),
        "macs_dense": float(s["macs_dense"]),
        "mac_ratio": float(s.get("mac_ratio", s["macs_mean"] / s["macs_dense"])),
        "gates_always_on": s.get("gates_always_on") if gated else None,
        "gates_always_off": s.get("gates_always_off") if gated else None,
        "gates_conditional": s.get("gates_conditional") if gated else None,
        "bs_weight": loss.bs_weight if loss else None,
        "l0_weight": loss.l0_weight if loss else None,
        "macs_target": loss.macs_target if loss else None,
        "epochs": s.get("epochs"),
        "wall_time_s": s.get("wall_time_s"),
    }


def run_kind(
    model: str, bs_weight: float | None, l0_weight: float | None, macs_target: float | None = None
) -> str:
    """ "dense", "batch-shaping" (bs_weight > 0), "L0 only" (bs_weight == 0 with an L0 weight or a MAC
    target: the budget term pulls the expected MACs, an L0 weighted by each gate's MACs, to the target),
    "gated, no sparsity loss", or "gated (loss unknown)" without a config."""
    from batchshaping.models import model_info

    try:
        gated = model_info(model).gated
    except ValueError:  # a model this version does not know: go by the naming convention
        gated = model.startswith("gated_")
    if not gated:
        return "dense"
    if bs_weight is None:
        return "gated (loss unknown)"
    if bs_weight > 0:
        return "batch-shaping"
    return "L0 only" if l0_weight or macs_target is not None else "gated, no sparsity loss"


def _sparsity(r: dict[str, Any]) -> str:
    """The table's sparsity column: the L0 weight and the MAC target a gated run trained with."""
    if r["kind"] == "dense" or r["l0_weight"] is None:
        return "-" if r["kind"] == "dense" else "unknown"
    parts = [f"L0 {r['l0_weight']:g}"] if r["l0_weight"] else []
    parts += [] if r["macs_target"] is None else [f"MAC target {r['macs_target']:g}"]
    return ", ".join(parts) or "none"


def compare_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    paired: bool = False,
    reference: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> list[Path]:
    """Compare finished run folders: write compare.md, accuracy_vs_macs.png and compare.json ({"title",
    "plot", "macs_unit", "runs": one dict per run as :func:`load_run` returns it, plus its point label})
    into ``out``. Returns the paths written, compare.md first, then the PNG and compare.json.

    ``paired``: evaluate every run's last.pt on its test split (found as ``batchshaping eval`` finds it,
    ``data_dir`` first; ``download`` fetches CIFAR-10 if missing) and compare each run's per-image
    correctness with that of ``reference`` (one of ``run_dirs``; default the first dense run, else the
    first run) on the same images: compare.json gets "paired" (:func:`paired_comparison`), compare.md a
    table. Classification runs of one test set only.
    """
    if not run_dirs:
        raise FileNotFoundError("no run folders given")
    rows = [load_run(d) for d in run_dirs]  # all validated before anything is written
    if reference is not None and not paired:
        raise ConfigError("reference is the run of the paired comparison: pass paired=True (--paired) too")
    ref = _reference(rows, reference) if paired else None
    if paired:
        _check_pairable(rows)
    out_path = prepare_out(out)  # before the evaluations: fail fast
    _label(rows)
    datasets = {DATASET_NAMES.get(r["dataset"], r["dataset"]) for r in rows}
    sizes = {r["test_images"] for r in rows}
    data = " / ".join(sorted(datasets))
    size = f"{sizes.pop()} images" if len(sizes) == 1 and None not in sizes else "test subsets differ"
    title = f"Top-1 accuracy versus compute, {data} test ({size})"
    div, unit = mac_unit(max(r["macs"] for r in rows))
    result: dict[str, Any] = {"title": title, "plot": PLOT_FILE, "macs_unit": unit, "runs": rows}
    if ref is not None:
        result["paired"] = paired_comparison(rows, ref, data_dir, download)
    plots.accuracy_vs_macs(rows, title, out_path / PLOT_FILE)
    (out_path / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_path / "compare.md").write_text(_markdown(rows, title, div, unit, result.get("paired")))
    return [out_path / "compare.md", out_path / PLOT_FILE, out_path / "compare.json"]


def _reference(rows: list[dict[str, Any]], reference: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The row of ``reference`` (one of the compared folders), or the first dense run, or the first run."""
    if reference is None:
        return next((r for r in rows if r["kind"] == "dense"), rows[0])
    want = Path(reference).resolve()
    for r in rows:
        if Path(r["run"]).resolve() == want:
            return r
    raise ConfigError(
        f"the reference {str(reference)!r} is not one of the compared runs; name one of them: "
        + ", ".join(r["run"] for r in rows)
    )


def _check_pairable(rows: list[dict[str, Any]]) -> None:
    """A paired comparison needs classifiers evaluated on the same test images, and their checkpoints."""
    segmentation = [r["run"] for r in rows if r["dataset"] == "cityscapes"]
    if segmentation:
        raise ConfigError(
            f"the paired comparison compares per-image top-1 of classifiers; {segmentation} are segmentation "
            "runs (compare them without --paired)"
        )
    sets = {(r["dataset"], r["test_images"]) for r in rows}
    if len(sets) > 1:
        raise ConfigError(
            "the paired comparison needs one test set for all runs, got "
            + ", ".join(f"{r['run']}: {r['dataset']}, {r['test_images']} images" for r in rows)
        )
    missing = [r["run"] for r in rows if not (Path(r["run"]) / "last.pt").is_file()]
    if missing:
        raise FileNotFoundError(f"the paired comparison evaluates each run's last.pt; missing in {missing}")


def paired_comparison(
    rows: list[dict[str, Any]],
    ref: dict[str, Any],
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Evaluate each run's last.pt on its test split and compare its per-image correctness with ``ref``'s.

    Returns {"reference", "reference_top1" (this pass), "images", "level", "runs": one dict per run other
    than the reference: "run", "top1" (this pass) and :func:`~batchshaping.analysis.stats.paired_accuracy`
    with the run as A and the reference as B, "differs_from_summary": the runs whose top-1 in this pass is
    not their summary.json's ("run", "summary_top1", "top1")}. Raises ConfigError when the runs saw
    different labels (not the same test images in the same order).
    """
    level = 0.95
    correct: dict[str, np.ndarray] = {}
    labels = None
    for r in rows:
        hits, y = _per_image_top1(r, data_dir, download)
        if labels is not None and not np.array_equal(labels, y):
            raise ConfigError(
                f"{r['run']} was evaluated on other test images than {rows[0]['run']} (the labels differ): "
                "a paired comparison needs the same images in the same order"
            )
        labels, correct[r["run"]] = y, hits
    base, n = correct[ref["run"]], len(labels)
    top1 = {run: float(hits.mean()) for run, hits in correct.items()}
    # top-1 of this pass against the run's own final evaluation (summary.json): low precision and another
    # thread count round differently, which can move an image that lies on a decision boundary
    moved = [
        {"run": r["run"], "summary_top1": r["top1"], "top1": top1[r["run"]]}
        for r in rows
        if round(top1[r["run"]] * n) != round(r["top1"] * n)
    ]
    runs = [
        {"run": r["run"], "top1": top1[r["run"]], **paired_accuracy(correct[r["run"]], base, level)}
        for r in rows
        if r is not ref
    ]
    return {
        "reference": ref["run"],
        "reference_top1": top1[ref["run"]],
        "images": n,
        "level": level,
        "runs": runs,
        "differs_from_summary": moved,
    }


def _per_image_top1(
    r: dict[str, Any], data_dir: str | os.PathLike[str] | None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) bool top-1 hits and (N,) int64 labels of run row ``r``'s last.pt on its test images (the
    evaluation ``batchshaping eval`` runs, at the run's precision)."""
    from batchshaping.experiment import evaluate_checkpoint

    hits: list[Tensor] = []
    ys: list[Tensor] = []

    def observe(logits: Tensor, y: Tensor, outs: object, macs: Tensor) -> None:
        hits.append((top_classes(logits)[:, 0] == y).cpu())  # as the top-1 metric ranks, ties included
        ys.append(y.cpu())

    subset = r["test_images"] if r["test_images"] != FULL_TEST_SIZE.get(r["dataset"]) else None
    path = Path(r["run"]) / "last.pt"
    root = None if data_dir is None else str(data_dir)
    evaluate_checkpoint(path, root, download=download, max_images=subset, observe=observe)
    return torch.cat(hits).numpy(), torch.cat(ys).numpy()


def _label(rows: list[dict[str, Any]]) -> None:
    """Point labels: the model name, or the run folder's name where a model appears twice in a kind (run
    names usually contain the model's; a short label keeps neighbouring points legible)."""
    seen = Counter((r["kind"], r["model"]) for r in rows)
    for r in rows:
        dup = seen[(r["kind"], r["model"])] > 1
        r["label"] = Path(r["run"]).name if dup else r["model"]


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.0f} s"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def _gates(v: float | None) -> str:
    """A gate-class fraction in the table's "%" columns: "12.3", "-" for a dense run."""
    return pct(v, digits=1, suffix="", missing="-")


def _markdown(
    rows: list[dict[str, Any]], title: str, div: float, unit: str, paired: dict[str, Any] | None = None
) -> str:
    lines = [
        f"# {title}",
        "",
        f"![accuracy versus MACs]({PLOT_FILE})",
        "",
        f"| run | model | kind | sparsity | top-1 (%) | {unit} | MAC ratio | % always on | % always off "
        "| % conditional | epochs | wall time | test images |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["kind"] != "dense", r["macs"])):
        lines.append(
            f"| `{r['run']}` | {r['model']} | {r['kind']} | {_sparsity(r)} | {100 * r['top1']:.2f} | "
            f"{r['macs'] / div:.2f} | {r['mac_ratio']:.3f} | {_gates(r['gates_always_on'])} | "
            f"{_gates(r['gates_always_off'])} | {_gates(r['gates_conditional'])} | {r['epochs']} | "
            f"{_fmt_time(r['wall_time_s'])} | {r['test_images']} |"
        )
    lines += [
        "",
        "MACs: mean per test image (conditional for gated runs, including the gates' own MACs); MAC ratio: "
        "mean over the dense twin's MACs. Gate classes: open for > 99% (always on) / < 1% (always off) of "
        "the test images. kind: batch-shaping = loss.bs_weight > 0, L0 only = bs_weight 0 (with an L0 weight "
        "or a MAC target: loss.macs_target pulls the expected MACs, an L0 weighted by each gate's MACs, to "
        "it).",
        "",
    ]
    if paired:
        lines += _paired_markdown(paired)
    return "\n".join(lines)


def _paired_markdown(paired: dict[str, Any]) -> list[str]:
    ref, level = paired["reference"], paired["level"]
    lines = [
        f"## Paired on the same {paired['images']} test images",
        "",
        f"Each run's top-1 minus that of `{ref}` ({100 * paired['reference_top1']:.2f}% in this pass), with "
        f"its {level:.0%} confidence interval (Agresti-Min, matched pairs) and the exact McNemar p-value: "
        "what the sampling of test images allows. Neither covers seed-to-seed variation of training, which "
        "a second seed of each run measures.",
        "",
        "| run | top-1 (%) | difference (points) | "
        f"{level:.0%} CI (points) | only this run right | only the reference right | p (McNemar) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in paired["runs"]:
        lines.append(
            f"| `{r['run']}` | {100 * r['top1']:.2f} | {100 * r['diff']:+.2f} | {100 * r['low']:+.2f} to "
            f"{100 * r['high']:+.2f} | {r['only_a']} | {r['only_b']} | {r['p']:.3g} |"
        )
    for m in paired["differs_from_summary"]:
        lines += [
            "",
            f"`{m['run']}`: top-1 {100 * m['top1']:.2f}% in this pass, {100 * m['summary_top1']:.2f}% in its "
            "summary.json. The pass runs at the run's precision on this machine's threads; in bf16 another "
            "thread count rounds differently, which moves images that lie on a decision boundary.",
        ]
    return lines + [""]
