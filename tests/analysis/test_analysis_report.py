import json
import re
from itertools import pairwise

import numpy as np
import pytest

from batchshaping.analysis import analyze_checkpoint, analyze_model, describe_outputs, plots
from batchshaping.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model
from batchshaping.cli import main
from batchshaping.data import DataError
from batchshaping.gates import force_gates
from tests.analysis.conftest import CLASSES, data
from tests.conftest import tiny_data

NUMBERS = ["analysis.json", "per_image.npz"]  # written after the plots, with or without them


def analyze(run, out, n=40, **kw):
    """analyze_checkpoint on n tiny images: (the analysis.json it wrote, the paths it returned)."""
    paths = analyze_checkpoint(run / "last.pt", out, test_data=data(n, 5), classes=CLASSES, **kw)
    return json.loads((out / "analysis.json").read_text()), paths


def test_report_references_existing_plots_and_json_is_consistent(gated_run, tmp_path):
    a, paths = analyze(gated_run, tmp_path, max_images=30)
    assert a["num_images"] == 30 and a["gated"]
    report = (tmp_path / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) == 8 and all((tmp_path / p).is_file() for p in images)
    # Every file written is returned, report.md first.
    assert paths == [
        tmp_path / "report.md",
        *(tmp_path / p for p in images),
        *(tmp_path / f for f in NUMBERS),
    ]
    assert sorted(paths) == sorted(tmp_path.iterdir())
    assert describe_outputs(paths) == f"wrote {tmp_path}/report.md (+ 8 plots, analysis.json, per_image.npz)"
    assert "gated_resnet20 on" in report and "(30 images)" in report
    assert "| loss weights | batch-shaping 0.0, L0 0.0 |" in report  # trained without a MAC target

    g = a["gates"]
    assert sum(g["fractions"].values()) == pytest.approx(1.0)
    assert sum(g["counts"].values()) == g["total"] == sum(layer["gates"] for layer in g["layers"])
    for layer in g["layers"]:
        assert sum(layer["counts"].values()) == layer["gates"] == len(layer["on_rate"])
        assert sum(layer["prob_hist"]) == 30 * layer["gates"]
    by_name = {layer["name"]: layer for layer in g["layers"]}
    assert by_name["layer1.0.gate"]["counts"]["always_off"] == 16  # planted closed in the fixture
    assert by_name["layer1.1.gate"]["counts"]["conditional"] > 0  # planted input-dependent

    per_image = np.load(tmp_path / "per_image.npz")
    assert len(per_image["macs"]) == 30 and per_image["macs"].mean() == pytest.approx(a["macs"]["mean"])
    assert a["macs"]["ratio"] == pytest.approx(a["macs"]["mean"] / a["macs"]["dense"])
    pc = a["per_class"]
    assert [c["class"] for c in pc] == CLASSES and sum(c["images"] for c in pc) == 30
    weighted = sum(c["macs_mean"] * c["images"] for c in pc if c["images"])
    assert weighted / 30 == pytest.approx(a["macs"]["mean"])
    ci = a["correct_vs_incorrect"]
    assert ci["correct"]["images"] + ci["incorrect"]["images"] == 30
    assert ci["correct"]["images"] / 30 == pytest.approx(a["top1"])
    assert np.isfinite(a["spearman"]["macs_vs_entropy"])  # MACs vary with the planted gates
    lo, hi = a["spearman_ci95"]["macs_vs_entropy"]
    assert lo < a["spearman"]["macs_vs_entropy"] < hi and "(95% CI " in report
    wrong = per_image["pred"] != per_image["label"]
    assert 0 < wrong.sum() < 30  # the fixture gets some right and some wrong
    # the share of (incorrect, correct) pairs where the incorrect image costs more, ties counting half
    pairs = per_image["macs"][wrong][:, None] - per_image["macs"][~wrong][None, :]
    want = (pairs > 0).mean() + 0.5 * (pairs == 0).mean()
    assert a["incorrect_more_macs"]["auc"] == pytest.approx(want)
    assert "A misclassified image gets more MACs than a correctly classified one in **" in report
    most = a["extremes"]["most_macs"]
    assert [r["macs"] for r in most] == sorted((r["macs"] for r in most), reverse=True)
    assert most[0]["macs"] == per_image["macs"].max()


def test_report_names_the_mac_target_a_run_trained_to(gated_run, tmp_path):
    ckpt = load_checkpoint(gated_run / "last.pt")
    ckpt["config"]["loss"].update(macs_target=0.585, macs_weight=20.0)
    atomic_save(ckpt, tmp_path / "budget.pt")
    analyze_checkpoint(tmp_path / "budget.pt", tmp_path / "a", test_data=data(20, 5), classes=CLASSES)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| loss weights | batch-shaping 0.0, L0 0.0, MAC target 0.585 (weight 20.0) |" in report


def test_forced_gates_give_all_always_on_or_all_always_off(gated_run, tmp_path):
    model, _ = load_model(gated_run / "last.pt")
    x, y = data(20, 6)
    for value, want in ((1.0, "always_on"), (0.0, "always_off")):
        force_gates(model, value)
        a = analyze_model(model, x, y, tmp_path, model_name="forced", data_name="tiny", make_plots=False)
        assert a["gates"]["fractions"][want] == 1.0
        assert a["macs"]["per_image"]["min"] == a["macs"]["per_image"]["max"]
        assert a["spearman"]["macs_vs_entropy"] is None  # constant MACs: no rank correlation (JSON null)
        assert a["spearman_ci95"]["macs_vs_entropy"] == [None, None]
    report = (tmp_path / "report.md").read_text()
    assert (
        "![" not in report
        and "| gates always on / conditional / always off | 0.00% / 0.00% / 100.00% |" in report
    )


def test_dense_checkpoint_reports_no_gates(dense_run, tmp_path):
    a, paths = analyze(dense_run, tmp_path)
    assert paths == [tmp_path / "report.md", *(tmp_path / f for f in NUMBERS)]
    assert sorted(paths) == sorted(tmp_path.iterdir())
    assert describe_outputs(paths) == f"wrote {tmp_path}/report.md (+ analysis.json, per_image.npz)"
    report = (tmp_path / "report.md").read_text()
    assert "has no gates" in report and "top-1" in report and "MMACs" in report
    assert not a["gated"] and "gates" not in a and a["plots"] == {}
    assert a["macs"]["ratio"] == 1.0 and 0 <= a["top1"] <= 1
    assert not list(tmp_path.glob("*.png"))


def test_missing_checkpoint_and_unwritable_out_give_clear_errors(gated_run, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not found"):
        analyze_checkpoint(tmp_path / "nope.pt", tmp_path / "out")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="a_file/out"):
        analyze(gated_run, blocker / "out")  # a path under a regular file fails even as root
    with pytest.raises(DataError, match="labels go up to 11 but the model has 10 outputs"):
        analyze_checkpoint(gated_run, tmp_path / "o", test_data=tiny_data(40, 1, classes=12))
    assert main(["analyze", str(gated_run / "last.pt"), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "a_file/out" in err and len(err.splitlines()) == 1


def test_real_cifar10_test_set_is_loaded_by_default(gated_run, tmp_path, cifar_dir):
    paths = analyze_checkpoint(gated_run, tmp_path, data_dir=cifar_dir, max_images=50, make_plots=False)
    assert [p.name for p in paths] == ["report.md", *NUMBERS]
    a = json.loads((tmp_path / "analysis.json").read_text())
    assert a["data"] == "CIFAR-10 test" and a["num_images"] == 50
    assert [c["class"] for c in a["per_class"]][:2] == ["airplane", "automobile"]
    assert sum(c["images"] for c in a["per_class"]) == 50


def test_describe_outputs_counts_plots():
    assert (
        describe_outputs(["o/compare.md", "o/a.png", "o/compare.json"])
        == "wrote o/compare.md (+ 1 plot, compare.json)"
    )
    assert describe_outputs(["o/report.md"]) == "wrote o/report.md"


@pytest.mark.parametrize(
    "lo, hi", [(0.55, 0.95), (1.7, 4.8), (0.15, 2.2), (0.02, 3), (1e-4, 8), (0.51, 0.53)]
)
def test_log_axis_labels_are_plain_and_do_not_overlap(lo, hi):
    fig, ax = plots._subplots(figsize=(5.75, 4.4))  # about one panel of macs_vs_entropy_loss.png
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    plots._plain_log_ticks(ax.xaxis, lo, hi)
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert len(labels) >= 2 and all("times" not in t.get_text() for t in labels)
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
    assert all(left.x1 < right.x0 for left, right in pairwise(boxes))
