"""examples/: each script runs as its docstring says (at a few steps) and writes what it promises, so the
examples cannot fall behind the API."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's package, installed or not
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_fit_priors_writes_its_figure_and_distances(tmp_path):
    out = run_example("fit_priors.py", "--steps", "3", "--out", str(tmp_path))
    record = json.loads((tmp_path / "fit_priors.json").read_text())
    assert record["steps"] == 3 and record["Beta(2, 6)"]["ks_distance"]["after"] >= 0
    assert (tmp_path / "fit_priors.png").stat().st_size > 0 and str(tmp_path / "fit_priors.png") in out


def test_shape_features_trains_on_cifar10_and_writes_its_figure(tmp_path, cifar_dir):
    args = ["--data-dir", str(cifar_dir), "--steps", "2", "--batch", "32", "--train-images", "256"]
    out = run_example("shape_features_cifar10.py", *args, "--test-images", "64", "--out", str(tmp_path))
    record = json.loads((tmp_path / "shape_features_cifar10.json").read_text())
    assert record["steps"] == 2 and "cross-entropy only" in record
    assert (tmp_path / "shape_features_cifar10.png").stat().st_size > 0 and "wrote" in out
