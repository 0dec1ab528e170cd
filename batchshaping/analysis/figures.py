"""The figures of a report: which of :mod:`batchshaping.analysis.plots` a task gets, and what goes into
them (the numbers of analysis.json, the per-image arrays of the pass, thumbnails of the test images)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from batchshaping.analysis import plots
from batchshaping.analysis.collect import PassResult
from batchshaping.analysis.formatting import mac_unit, pct
from batchshaping.analysis.numbers import classes_shown, is_segmentation

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

#: The plots a segmentation report leaves out, and why (the report says so).
SEGMENTATION_LEFT_OUT = {
    "macs_correct": "a segmented image is not right or wrong as a whole; its pixel accuracy is plotted "
    "against its MACs under compute versus difficulty instead",
    "macs_per_class": "an image holds pixels of many classes, so there is no class per image to average "
    "its MACs over",
}

#: Longest side, in pixels, of an image tile in the grids: larger test images (ImageNet crops, Cityscapes
#: frames) are shrunk, since a tile is drawn ~170 pixels wide and a mosaic of full frames would take > 1 GB.
TILE_MAX_SIDE = 160

#: Test-set indices -> those images (K, C, H, W), uint8 or float in [0, 1], for the grids.
ImageSource = Callable[[Sequence[int]], np.ndarray]


def left_out_plots(a: dict[str, Any]) -> dict[str, str]:
    """{plot key: why it is not drawn} for the analysis ``a`` of a gated model (empty: all are drawn)."""
    return dict(SEGMENTATION_LEFT_OUT) if is_segmentation(a) else {}


def image_source(test: Any, mean: Sequence[float], std: Sequence[float]) -> ImageSource | None:
    """Where the grids get their images: ``test`` is ``(x, y)`` tensors (x (N, C, H, W) uint8 or float in
    [0, 1]) or a DataLoader of normalised images, whose data set is indexed again and un-normalised with
    ``mean``/``std`` (C,). None for any other iterable (then no grids are drawn)."""
    if isinstance(test, tuple | list):
        x = torch.as_tensor(test[0])
        return lambda idx: _thumbnails(x[list(idx)].cpu())
    dataset = getattr(test, "dataset", None)
    if dataset is None:
        return None
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def read(idx: Sequence[int]) -> np.ndarray:
        # One image at a time: a grid's 16 full-size Cityscapes frames would take 400 MB in float32.
        tiles = [
            _thumbnails((torch.as_tensor(dataset[i][0]).float() * s + m).clamp_(0, 1)[None]) for i in idx
        ]
        size = tiles[0].shape[-2:]
        return np.concatenate([t if t.shape[-2:] == size else _resize(t, size) for t in tiles])

    return read


def _thumbnails(x: torch.Tensor) -> np.ndarray:
    """Images (K, C, H, W) as an array, shrunk (area-averaged) to TILE_MAX_SIDE on their longer side if
    larger; smaller images keep their values and dtype."""
    h, w = x.shape[-2:]
    if max(h, w) <= TILE_MAX_SIDE:
        return x.numpy()
    scale = TILE_MAX_SIDE / max(h, w)
    return _resize(x.numpy(), (max(1, round(h * scale)), max(1, round(w * scale))))


def _resize(images: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(K, C, H, W) images -> (K, C, *size) float in [0, 1]."""
    t = torch.as_tensor(images)
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return F.interpolate(t, size=tuple(size), mode="area").numpy()


def write_plots(res: PassResult, a: dict[str, Any], images: ImageSource | None, out: Path) -> dict[str, str]:
    """Write the PNGs of a gated model's analysis ``a`` (from
    :func:`~batchshaping.analysis.numbers.build_analysis`) into ``out``.

    res: the pass over the N test images that ``images`` reads back by index (no image grids when None).
    Returns {plot key: file name}, in the order of PLOT_FILES, without the plots the task leaves out.
    """
    sub = f"{a['model']} on {a['data']} ({a['num_images']} images)"
    dense = a["macs"]["dense"]
    layers = a["gates"]["layers"]
    counts = [layer["counts"] | {"total": layer["gates"]} for layer in layers]
    skip = left_out_plots(a)
    f = {k: out / v for k, v in PLOT_FILES.items() if k not in skip}
    plots.gate_classes_per_layer(res.layer_names, counts, sub, f["gate_classes"])
    plots.gate_prob_histograms(res.layer_names, res.prob_hist, counts, sub, f["gate_probs"])
    plots.macs_histogram(res.macs, dense, sub, f["macs_hist"])
    plots.macs_vs_difficulty(res.macs, _difficulty_panels(res, a), dense, sub, f["macs_difficulty"])
    if "macs_correct" in f:
        plots.macs_correct_incorrect(res.macs, res.correct, dense, sub, f["macs_correct"])
    if "macs_per_class" in f:
        shown, note = classes_shown(a["per_class"])
        plots.macs_per_class(
            [c["class"] for c in shown],
            np.array([c["macs_mean"] for c in shown], dtype=float),
            np.array([c["top1"] for c in shown], dtype=float),
            a["macs"]["mean"],
            dense,
            sub,
            f["macs_per_class"],
            selection=f"{len(shown)} of {len(a['per_class'])} classes by mean MACs" if note else None,
        )
    if images is None:
        del f["most_macs"], f["fewest_macs"]
    else:
        _image_grids(a, images, dense, sub, f)
    return {k: v.name for k, v in f.items()}


def _difficulty_panels(res: PassResult, a: dict[str, Any]) -> list[plots.DifficultyPanel]:
    """Classification: MACs against the prediction entropy and the loss; segmentation: against the
    image's pixel accuracy, mean pixel entropy and mean pixel loss."""
    rho = a["spearman"]
    entropy, loss = "prediction entropy", "cross-entropy loss"
    panels = []
    if is_segmentation(a):
        entropy, loss = "mean prediction entropy per labelled pixel", "mean cross-entropy per labelled pixel"
        panels.append(
            plots.DifficultyPanel(res.pixel_acc, rho["macs_vs_pixel_acc"], "pixel accuracy", "per image")
        )
    return [
        *panels,
        plots.DifficultyPanel(res.entropy, rho["macs_vs_entropy"], entropy, "nats"),
        plots.DifficultyPanel(res.loss, rho["macs_vs_loss"], loss, "nats", log=True),
    ]


def _image_grids(a: dict[str, Any], images: ImageSource, dense: float, sub: str, f: dict[str, Path]) -> None:
    """The grids of the images with the most and the fewest MACs; captions: test-set index, then the true
    class and the prediction (red if wrong) or the pixel accuracy, then the MACs."""
    div, unit = mac_unit(dense)
    segmentation = is_segmentation(a)
    for key, what in (("most_macs", "most"), ("fewest_macs", "fewest")):
        recs = a["extremes"][key]
        if segmentation:
            captions = [
                f"#{r['index']}\npixel acc. {pct(r['pixel_acc'], 1)}\n{r['macs'] / div:.2f} {unit}"
                for r in recs
            ]
            wrong, title = None, f"The {len(recs)} images with the {what} MACs\n{sub}"
        else:
            captions = [
                f"#{r['index']} {r['label']}\n{'ok' if r['label'] == r['pred'] else 'pred ' + r['pred']}"
                f"\n{r['macs'] / div:.2f} {unit}"
                for r in recs
            ]
            wrong = [r["label"] != r["pred"] for r in recs]
            title = f"The {len(recs)} images with the {what} MACs (red: misclassified)\n{sub}"
        plots.image_grid(images([r["index"] for r in recs]), captions, title, f[key], highlight=wrong)
