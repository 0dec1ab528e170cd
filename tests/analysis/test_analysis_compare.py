import json
import shutil
from pathlib import Path

import pytest

from batchshaping.analysis import compare_runs, describe_outputs
from batchshaping.cli import main
from batchshaping.config import dump_config, load_config


def relabel(run, dst, bs_weight, l0_weight, macs_target=None):
    """A copy of ``run`` whose config.yaml has other loss weights (compare reads only summary.json and
    config.yaml; the fixture trained with both losses off)."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("*.pt", "tb"))
    cfg = load_config(dst / "config.yaml")
    cfg.loss.bs_weight, cfg.loss.l0_weight, cfg.loss.macs_target = bs_weight, l0_weight, macs_target
    (dst / "config.yaml").write_text(dump_config(cfg))
    return dst


def test_compare_dense_gated_and_l0_only_runs(gated_run, dense_run, tmp_path):
    bs = relabel(gated_run, tmp_path / "bs_run", 0.75, 0.01)
    l0 = relabel(gated_run, tmp_path / "l0_run", 0.0, 0.01)
    out = tmp_path / "cmp"
    paths = compare_runs([bs, dense_run, l0], out)
    assert paths == [out / "compare.md", out / "accuracy_vs_macs.png", out / "compare.json"]
    assert sorted(paths) == sorted(out.iterdir()) and (out / "accuracy_vs_macs.png").stat().st_size > 0
    assert describe_outputs(paths) == f"wrote {out}/compare.md (+ 1 plot, compare.json)"
    on_disk = json.loads((out / "compare.json").read_text())
    kinds = {r["run"]: r["kind"] for r in on_disk["runs"]}
    assert kinds == {str(bs): "batch-shaping", str(dense_run): "dense", str(l0): "L0 only"}
    summary = json.loads((gated_run / "summary.json").read_text())
    row = next(r for r in on_disk["runs"] if r["kind"] == "batch-shaping")
    assert row["top1"] == summary["top1"] and row["macs"] == summary["macs_mean"]
    md = (out / "compare.md").read_text()
    assert "accuracy_vs_macs.png" in md and md.count("| `") == 3
    assert "MMACs" in md and "% always on" in md and "wall time" in md
    dense_line = next(line for line in md.splitlines() if str(dense_run) in line)
    assert "| - | - | - |" in dense_line  # no gate fractions for a dense run


def test_folder_without_summary_is_a_clear_error(gated_run, tmp_path, capsys):
    empty = tmp_path / "unfinished"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="unfinished.*summary.json"):
        compare_runs([gated_run, empty], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # validated before anything is written
    assert main(["compare", str(gated_run), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err


def test_a_mac_target_without_batch_shaping_is_an_l0_only_run_named_by_its_target(gated_run, tmp_path):
    budget = relabel(gated_run, tmp_path / "budget_run", 0.0, 0.0, macs_target=0.585)
    none = relabel(gated_run, tmp_path / "no_loss_run", 0.0, 0.0)
    both = relabel(gated_run, tmp_path / "bs_budget_run", 0.75, 0.001, macs_target=0.5)
    compare_runs([budget, none, both], tmp_path / "cmp")
    on_disk = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    kinds = {Path(r["run"]).name: r["kind"] for r in on_disk["runs"]}
    assert kinds == {
        "budget_run": "L0 only",
        "no_loss_run": "gated, no sparsity loss",
        "bs_budget_run": "batch-shaping",
    }
    lines = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    sparsity = {name: next(line for line in lines if f"{name}`" in line).split(" | ")[3] for name in kinds}
    assert sparsity == {
        "budget_run": "MAC target 0.585",
        "no_loss_run": "none",
        "bs_budget_run": "L0 0.001, MAC target 0.5",
    }
