"""scripts/results_table.py: the tables of RESULTS.md from the runs' summaries, one per protocol."""

import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import results_table  # noqa: E402


def fake_run(
    results: Path,
    name: str,
    model: str,
    epochs: int,
    macs: float,
    top1: float,
    cfg: str,
    seed: int = 0,
    **loss_keys,
) -> None:
    d = results / name
    d.mkdir(parents=True)
    gates = {"gates_always_on": 0.1, "gates_always_off": 0.0, "gates_conditional": 0.9}
    summary = {
        "model": model,
        "config": cfg,
        "epochs": epochs,
        "wall_time_s": 600.0,
        "device": "cuda",
        "machine": "NVIDIA H200",
        "precision": "bfloat16",
        "top1": top1,
        "macs_mean": macs,
        "mac_ratio": macs / 68.86e6,
        **gates,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    loss = {"bs_weight": 0.75, "bs_end": 0.2, "l0_weight": 0.0006, **loss_keys}
    (d / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "loss": loss}))


def test_paper_recipe_runs_get_their_own_table_command_and_the_headline(tmp_path):
    results = tmp_path / "cifar10"
    shutil.copytree(ROOT / "results" / "cifar10" / "resnet20_e36_gpu", results / "resnet20_e36_gpu")
    fake_run(results, "resnet20_paper_e500_gpu", "resnet20", 500, 40.55e6, 0.92, "cifar10_resnet20")
    fake_run(
        results,
        "gated_resnet32_bs_l0_0.0006_paper_e500_gpu",
        "gated_resnet32",
        500,
        38e6,
        0.925,
        "cifar10_gated_resnet32",
    )
    runs = results_table.load_runs(results)
    text = results_table.tables(runs, 40.55e6)
    paper, short = "**500-epoch GPU runs of the paper's recipe**", "**36-epoch GPU protocol**"
    assert text.index(paper) < text.index(short)
    cmd = "RECIPE=paper DEVICE=cuda bash scripts/reproduce_cifar10.sh gated_resnet32_bs_l0_0.0006"
    assert f"`{cmd}` |" in text
    assert "`EPOCHS=36 DEVICE=cuda bash scripts/reproduce_cifar10.sh resnet20` |" in text
    head = results_table.headline(runs, 40.55e6)
    assert head.startswith("Headline (500-epoch GPU runs of the paper's recipe")
    assert "| gated_resnet32_bs_l0_0.0006_paper_e500_gpu |" in head


def test_macs_target_table_says_how_far_each_run_ended_from_its_budget(tmp_path):
    results = tmp_path / "cifar10_macs_target"
    for name, macs in (("gated_resnet32_macs0.5_w20_n5000_e30", 0.51 * 68.86e6),):
        fake_run(results, name, "gated_resnet32", 30, macs, 0.4, "cifar10_gated_resnet32_cpu")
        summary = json.loads((results / name / "summary.json").read_text())
        # as older runs wrote it: the table says "1 thread"
        summary["machine"] = "Intel(R) Xeon(R) Processor (AVX512-BF16/AMX), 2 cores, 1 threads"
        (results / name / "summary.json").write_text(json.dumps(summary))
        cfg = yaml.safe_load((results / name / "config.yaml").read_text())
        cfg["loss"].update(macs_target=0.5, macs_weight=20.0)
        cfg["data"] = {"train_subset": 5000}
        (results / name / "config.yaml").write_text(yaml.safe_dump(cfg))
    text = results_table.macs_target_table(results_table.load_runs(results))
    row = text.splitlines()[-1]
    assert "| 0.5 | expected MACs, calibrated in evaluation mode | 0.5100 | +2.0% | 40.00% |" in row
    assert '`N=5000 TARGETS="0.5" WEIGHT=20 EPOCHS=30 THREADS=1 bash scripts/macs_target_cifar10.sh`' in row
    assert "| Intel(R) Xeon(R) Processor (AVX512-BF16/AMX), 2 cores, 1 thread (bfloat16) |" in row


def test_runs_trained_in_pieces_join_the_tables_with_their_command_budget_and_the_headline(tmp_path):
    results, pieces = tmp_path / "cifar10", tmp_path / "cifar10_paper"
    shutil.copytree(ROOT / "results" / "cifar10" / "resnet20_e36_gpu", results / "resnet20_e36_gpu")
    fake_run(pieces, "resnet20_e500", "resnet20", 500, 40.55e6, 0.918, "cifar10_resnet20")
    budget = {"l0_weight": 0.0, "macs_target": 0.585}
    fake_run(pieces, "gated_resnet32_budget0.585_e500", "gated_resnet32", 500, 40.1e6, 0.922, "b", **budget)
    fake_run(pieces, "unfinished_e500", "gated_resnet32", 500, 40e6, 0.93, "b")
    (pieces / "unfinished_e500" / "summary.json").unlink()  # a run still training has no summary.json
    runs = results_table.load_runs(results) + results_table.load_runs(pieces, pieces=True)
    text = results_table.tables(runs, 40.55e6)
    assert "**500-epoch GPU runs of the paper's recipe**" in text  # fake_run's device is CUDA
    assert (
        "| gated_resnet32_budget0.585_e500 | gated_resnet32 | 0.75 (first 20%) | 0.0 (MAC target 0.585) |"
        in text
    )
    assert (
        text.count("`MAX_TIME=2h30m bash scripts/paper_cifar10_cpu.sh` |") == 2 and "unfinished" not in text
    )
    head = results_table.headline(runs, 40.55e6)
    assert head.startswith("Headline (500-epoch GPU runs of the paper's recipe")
    assert "| resnet20_e500 |" in head and "| gated_resnet32_budget0.585_e500 |" in head
    assert "The gated row is the batch-shaping gated_resnet32 run at or below resnet20's MACs: +0.40" in head


def test_headline_keeps_the_longest_protocol_when_no_gated_run_is_within_resnet20s_macs(tmp_path):
    # a gated run 0.1% above resnet20's MACs stays the headline's, said as it is (not the shorter protocol's)
    results = tmp_path / "cifar10"
    shutil.copytree(ROOT / "results" / "cifar10" / "resnet20_e36_gpu", results / "resnet20_e36_gpu")
    shutil.copytree(
        ROOT / "results" / "cifar10" / "gated_resnet32_bs10_l0_0.001_e36_gpu",
        results / "gated_resnet32_bs10_l0_0.001_e36_gpu",
    )
    fake_run(results, "resnet20_paper_e500_gpu", "resnet20", 500, 40.55e6, 0.92, "cifar10_resnet20")
    for name, macs in (("gated_a_paper_e500_gpu", 40.6e6), ("gated_b_paper_e500_gpu", 40.8e6)):
        fake_run(results, name, "gated_resnet32", 500, macs, 0.921, "cifar10_gated_resnet32")
    head = results_table.headline(results_table.load_runs(results), 40.55e6)
    assert head.startswith("Headline (500-epoch GPU runs of the paper's recipe")
    assert "the cheapest of the 2 batch-shaping gated_resnet32 runs, none of which is at or below" in head
    assert "+0.10 points of top-1 against resnet20 at 1.0012 times its mean MACs" in head
    assert "| gated_a_paper_e500_gpu |" in head and "gated_b" not in head


def test_another_seeds_runs_get_its_command_and_the_headline_pairs_runs_of_one_seed(tmp_path):
    pieces = tmp_path / "cifar10_paper"
    budget = {"l0_weight": 0.0, "macs_target": 0.585}
    fake_run(pieces, "resnet20_e500", "resnet20", 500, 40.55e6, 0.92, "cifar10_resnet20")
    fake_run(pieces, "resnet20_e500_s1", "resnet20", 500, 40.55e6, 0.90, "cifar10_resnet20", seed=1)
    fake_run(
        pieces, "gated_resnet32_budget0.585_e500_s1", "gated_resnet32", 500, 40e6, 0.91, "b", seed=1, **budget
    )
    summary = json.loads((pieces / "resnet20_e500" / "summary.json").read_text())
    summary["machine"] = "Intel(R) Xeon(R) Processor (AVX512-BF16/AMX), 2 cores, 1 threads"  # written so once
    (pieces / "resnet20_e500" / "summary.json").write_text(json.dumps(summary))
    runs = results_table.load_runs(pieces, pieces=True)
    text = results_table.tables(runs, 40.55e6)
    assert text.count("`SEED=1 MAX_TIME=2h30m bash scripts/paper_cifar10_cpu.sh` |") == 2
    assert text.count("`MAX_TIME=2h30m bash scripts/paper_cifar10_cpu.sh` |") == 1
    assert "2 cores, 1 thread (bfloat16)" in text and "threads" not in text
    # seed 1's gated run is not judged against seed 0's resnet20: no seed has both yet
    assert results_table.headline(runs, 40.55e6).startswith("No protocol has both")
    fake_run(pieces, "gated_resnet32_budget0.585_e500", "gated_resnet32", 500, 40.2e6, 0.925, "b", **budget)
    head = results_table.headline(results_table.load_runs(pieces, pieces=True), 40.55e6)
    assert "| resnet20_e500 |" in head and "| gated_resnet32_budget0.585_e500 |" in head and "_s1" not in head
    assert "+0.50 points of top-1" in head


def test_headline_adds_the_run_without_batch_shaping_of_the_same_seed_within_resnet20s_macs(tmp_path):
    pieces = tmp_path / "cifar10_paper"
    budget = {"l0_weight": 0.0, "macs_target": 0.585}
    fake_run(pieces, "resnet20_e500", "resnet20", 500, 40.55e6, 0.92, "cifar10_resnet20")
    fake_run(pieces, "gated_resnet32_budget0.585_e500", "gated_resnet32", 500, 40.2e6, 0.925, "b", **budget)
    # over resnet20's MACs, or another seed's: not in the headline
    no_bs = {**budget, "bs_weight": 0.0}
    fake_run(pieces, "l0only_over_e500", "gated_resnet32", 500, 40.6e6, 0.94, "l", **no_bs)
    fake_run(pieces, "l0only_e500_s1", "gated_resnet32", 500, 40.1e6, 0.95, "l", seed=1, **no_bs)
    head = results_table.headline(results_table.load_runs(pieces, pieces=True), 40.55e6)
    assert "The gated row is the batch-shaping gated_resnet32 run at or below resnet20's MACs: +0.50" in head
    assert "l0only" not in head
    fake_run(pieces, "l0only_e500", "gated_resnet32", 500, 40.3e6, 0.928, "l", **no_bs)
    head = results_table.headline(results_table.load_runs(pieces, pieces=True), 40.55e6)
    assert (
        "The first gated row is the batch-shaping gated_resnet32 run at or below resnet20's MACs: +0.50"
        in head
    )
    assert (
        "The last is the same network trained without batch-shaping (the sparsity term alone, the paper's "
        "claim (b)), at or below resnet20's MACs too: +0.80 points of top-1 against resnet20 at 0.9938 times"
    ) in head
    lines = head.splitlines()
    assert lines[-1].startswith("| l0only_e500 | gated_resnet32 | 0 | 0.0 (MAC target 0.585) | 92.80% |")
    assert lines[-2].startswith("| gated_resnet32_budget0.585_e500 |") and "_s1" not in head


def test_a_run_trained_in_pieces_on_two_cpus_names_each_cpu_with_its_epochs(tmp_path):
    pieces = tmp_path / "cifar10_paper"
    fake_run(pieces, "resnet20_e500", "resnet20", 500, 40.55e6, 0.92, "cifar10_resnet20")
    xeon, epyc = "Intel(R) Xeon(R) Processor (AVX512-BF16/AMX)", "AMD EPYC (AVX512-BF16 only)"
    spans = ((0, 45, xeon, 1), (45, 235, xeon, 2), (235, 322, epyc, 2), (322, 500, epyc, 2))
    history = [
        {"from_epoch": a, "to_epoch": b, "machine": f"{cpu}, 2 cores, {k} threads"} for a, b, cpu, k in spans
    ]
    (pieces / "resnet20_e500" / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    summary = json.loads((pieces / "resnet20_e500" / "summary.json").read_text())
    (pieces / "resnet20_e500" / "summary.json").write_text(
        json.dumps({**summary, "machine": f"{epyc}, 2 cores"})
    )
    text = results_table.tables(results_table.load_runs(pieces, pieces=True), 40.55e6)
    assert f"| {xeon}, epochs 1-235; {epyc}, epochs 236-500; 2 cores (bfloat16) |" in text
    # one CPU throughout: the summary's machine, as before
    (pieces / "resnet20_e500" / "history.jsonl").write_text(json.dumps(history[0]) + "\n")
    text = results_table.tables(results_table.load_runs(pieces, pieces=True), 40.55e6)
    assert f"| {epyc}, 2 cores (bfloat16) |" in text
