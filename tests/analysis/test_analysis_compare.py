import json
import shutil
from pathlib import Path

import pytest

from batchshaping.analysis import compare_runs, describe_outputs
from batchshaping.cli import main
from batchshaping.config import ConfigError, dump_config, load_config
from batchshaping.experiment import evaluate_checkpoint


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


def with_test_subset(run, dst, n, **loss):
    """A copy of ``run`` with its checkpoints, whose config evaluates the first ``n`` test images."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("tb"))
    cfg = load_config(dst / "config.yaml")
    cfg.data.test_subset = n
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    (dst / "config.yaml").write_text(dump_config(cfg))
    return dst


def test_paired_comparison_tests_each_run_against_the_reference_on_the_same_images(
    gated_run, dense_run, tmp_path, cifar_dir, capsys
):
    gated = with_test_subset(gated_run, tmp_path / "gated", 200, bs_weight=0.75)
    twin = with_test_subset(gated_run, tmp_path / "twin", 200, bs_weight=0.75)
    dense = with_test_subset(dense_run, tmp_path / "dense", 200)
    want = evaluate_checkpoint(gated / "last.pt", str(cifar_dir), max_images=200)["top1"]
    for run, top1 in ((gated, want), (twin, want), (dense, 0.999)):  # dense: as if evaluated elsewhere
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "top1": top1}))
    out = tmp_path / "cmp"
    args = ["compare", str(gated), str(twin), str(dense), "--out", str(out), "--paired"]
    assert main([*args, "--data-dir", str(cifar_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}/compare.md" in printed
    paired = json.loads((out / "compare.json").read_text())["paired"]
    assert paired["reference"] == str(dense) and paired["images"] == 200  # the dense run by default
    runs = {Path(r["run"]).name: r for r in paired["runs"]}
    assert set(runs) == {"gated", "twin"}
    g, ref = runs["gated"], paired["reference_top1"]
    # the pass is `batchshaping eval`'s, and the counts add up to the two top-1s
    assert g["top1"] == want
    assert paired["differs_from_summary"] == [{"run": str(dense), "summary_top1": 0.999, "top1": ref}]
    assert g["only_a"] - g["only_b"] == round(200 * (g["top1"] - ref)) and g["diff"] == g["top1"] - ref
    assert g["both"] + g["only_a"] + g["only_b"] + g["neither"] == 200 and g["low"] <= g["diff"] <= g["high"]
    assert 0 < g["p"] <= 1 and runs["twin"] == {**g, "run": str(twin)}  # same weights, same answers
    assert f"{gated} against {dense}: {100 * g['diff']:+.2f} points of top-1 (95% CI " in printed
    md = (out / "compare.md").read_text()
    assert "## Paired on the same 200 test images" in md and f"that of `{dense}`" in md
    row = next(line for line in md.splitlines() if line.startswith(f"| `{gated}` |") and "to" in line)
    assert f"| {g['only_a']} | {g['only_b']} |" in row
    assert f"`{dense}`: top-1 {100 * ref:.2f}% in this pass, 99.90% in its summary.json." in md


def test_paired_comparison_refuses_what_it_cannot_pair_before_writing(gated_run, dense_run, tmp_path, capsys):
    a = with_test_subset(gated_run, tmp_path / "a", 200)
    b = with_test_subset(dense_run, tmp_path / "b", 100)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="one test set for all runs.*a: cifar10, 200 images"):
        compare_runs([a, b], out, paired=True)
    c = with_test_subset(dense_run, tmp_path / "c", 200)
    with pytest.raises(ConfigError, match="reference .*elsewhere.* is not one of the compared runs"):
        compare_runs([a, c], out, paired=True, reference=tmp_path / "elsewhere")
    (c / "last.pt").unlink()
    with pytest.raises(FileNotFoundError, match="evaluates each run's last.pt; missing in .*c'"):
        compare_runs([a, c], out, paired=True)
    assert not out.exists()
    assert main(["compare", str(a), str(c), "--out", str(out), "--reference", str(a)]) == 2
    assert "--reference names the run of the paired comparison: add --paired" in capsys.readouterr().err
    assert not out.exists()
