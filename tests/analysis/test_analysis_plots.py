"""batchshaping.analysis.plots: the training-curve plot of runs of different lengths."""

import pytest

from batchshaping.analysis import plots


def run(epochs: int, top1: list[tuple[int, float]]) -> dict:
    log = [{"epoch": e, "top1": t, "macs_mean": 40e6} for e, t in top1]
    return {"label": f"run_{epochs}", "epochs": epochs, "log": [{"epoch": 0}, *log]}


def test_the_zoom_range_starts_two_points_under_the_best_final_top1_and_covers_the_late_peak():
    long = run(500, [(100, 0.95), (300, 0.90), (400, 0.925), (500, 0.921)])  # 95% before the zoom: left out
    short = run(36, [(20, 0.80), (36, 0.82)])  # ends far lower: falls off the bottom of the panel
    low, high = plots.late_top1_range([long, short], start=0.6)
    assert low == pytest.approx(92.1 - 2.0)
    assert high == pytest.approx(92.5 + 0.1)
    assert plots.late_top1_range([{"label": "x", "epochs": 5, "log": [{"epoch": 1}]}], 0.6) is None


def test_training_curves_draws_runs_of_any_length_and_without_evaluations(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    runs = [
        run(500, [(250, 0.8), (350, 0.92)]),
        run(36, [(10, 0.5)]),
        {"label": "new", "epochs": 9, "log": []},
    ]
    plots.training_curves(runs, 40e6, "title", path)
    assert path.stat().st_size > 1000
