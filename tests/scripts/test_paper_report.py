"""scripts/paper_report.sh: which analyses, comparisons, weights and tables it makes for which finished runs.

The Python it calls is replaced by a stand-in (PYTHON=a script) that records its arguments; a run has finished
when its folder holds summary.json, as scripts/paper_cifar10_cpu.sh leaves it.
"""

import os
import subprocess
from pathlib import Path

from tests.scripts.conftest import stage_runs

ROOT = Path(__file__).resolve().parents[2]
R20, BS, L0 = "resnet20_e500", "gated_resnet32_budget0.585_e500", "gated_resnet32_l0only_budget0.585_e500"

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >>"$CALLS"
"""


def report(
    tmp: Path,
    *steps: str,
    done: tuple[str, ...] = (),
    started: tuple[str, ...] = (),
    exists: tuple[str, ...] = (),
    force: bool = False,
) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run the script on run folders `done` (finished) and `started`, with the files `exists` (relative to
    tmp) already there; returns the calls it made, with tmp's path replaced by '$T', and the process."""
    fake, out, calls = stage_runs(tmp, FAKE_PYTHON, done, started)
    for f in exists:
        (tmp / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp / f).touch()
    env = dict(os.environ, PYTHON=str(fake), OUT=str(out), WEIGHTS=str(tmp / "weights"), DATA="data")
    env.update(LATENCY=str(tmp / "latency"))
    env.update(CALLS=str(calls), FORCE="1" if force else "0")
    res = subprocess.run(
        ["bash", str(ROOT / "scripts/paper_report.sh"), *steps], env=env, capture_output=True, text=True
    )
    return calls.read_text().replace(str(tmp), "$T").splitlines(), res


def test_while_runs_train_only_the_tables_are_made_and_each_step_says_what_it_waits_for(tmp_path):
    calls, res = report(tmp_path, started=(R20, BS))
    assert res.returncode == 0, res.stderr
    assert calls == ["scripts/paper_progress.py --write", "scripts/results_table.py --write"]
    assert f"claim (a) waits for {R20} and {BS} to finish" in res.stdout
    assert f"analyze: {BS} has not finished" in res.stdout


def test_claim_a_is_compared_once_resnet20_and_the_batch_shaping_run_have_finished(tmp_path):
    calls, res = report(tmp_path, "analyze", "compare", done=(R20, BS), started=(L0,))
    assert res.returncode == 0, res.stderr
    assert calls == [
        f"-m batchshaping analyze $T/runs/{BS} --out $T/runs/analysis --data-dir data",
        f"-m batchshaping compare $T/runs/{R20} $T/runs/{BS} --out $T/runs/compare --paired --data-dir data",
    ]
    assert f"claim (b) waits for {L0} to finish" in res.stdout


def test_once_the_l0_only_run_has_finished_it_joins_claim_a_and_claim_b_pairs_it_with_the_batch_shaping_run(
    tmp_path,
):
    calls, res = report(tmp_path, "compare", done=(R20, BS, L0))
    assert res.returncode == 0, res.stderr
    assert calls == [
        f"-m batchshaping compare $T/runs/{R20} $T/runs/{BS} $T/runs/{L0} --out $T/runs/compare --paired "
        "--data-dir data",
        f"-m batchshaping compare $T/runs/{BS} $T/runs/{L0} --out $T/runs/compare_b --paired "
        f"--reference $T/runs/{L0} --data-dir data",
    ]


def test_existing_analyses_weights_and_latencies_are_kept_unless_forced(tmp_path):
    # a latency measured before (on whichever machine) is not replaced by one measured on this one
    made = ("runs/analysis/report.md", f"weights/{R20}.pt", "latency/latency_paper_e500.json")
    steps = ("analyze", "weights", "latency")
    calls, res = report(tmp_path, *steps, done=(R20, BS, L0), exists=made)
    assert res.returncode == 0, res.stderr
    assert calls == [
        f"-m batchshaping analyze $T/runs/{L0} --out $T/runs/analysis_l0only --data-dir data",
        f"scripts/export_weights.py $T/runs/{BS} $T/runs/{L0} --out $T/weights --check --data-dir data",
        f"-m benchmarks.latency --checkpoint $T/runs/{L0}/last.pt --reference $T/runs/{R20}/last.pt "
        "--threads 1 --no-batched --cifar-images 64 --budget 60 "
        "--out $T/latency/latency_paper_e500_l0only.json",
    ]
    assert "latency: $T/latency/latency_paper_e500.json exists" in res.stdout.replace(str(tmp_path), "$T")
    forced, _ = report(tmp_path / "f", *steps, done=(R20, BS, L0), exists=made, force=True)
    assert len(forced) == 5 and f"$T/runs/{R20} $T/runs/{BS} $T/runs/{L0}" in forced[2]


def test_another_seed_gets_its_own_folders_and_is_paired_only_with_runs_of_its_seed(tmp_path):
    s1 = tuple(f"{r}_s1" for r in (R20, BS, L0))
    calls, res = report(tmp_path, "analyze", "compare", "latency", done=(R20, *s1), started=(BS,))
    assert res.returncode == 0, res.stderr
    assert calls == [
        f"-m batchshaping analyze $T/runs/{BS}_s1 --out $T/runs/analysis_s1 --data-dir data",
        f"-m batchshaping analyze $T/runs/{L0}_s1 --out $T/runs/analysis_l0only_s1 --data-dir data",
        f"-m batchshaping compare $T/runs/{R20}_s1 $T/runs/{BS}_s1 $T/runs/{L0}_s1 --out $T/runs/compare_s1 "
        "--paired --data-dir data",
        f"-m batchshaping compare $T/runs/{BS}_s1 $T/runs/{L0}_s1 --out $T/runs/compare_b_s1 --paired "
        f"--reference $T/runs/{L0}_s1 --data-dir data",
        f"-m benchmarks.latency --checkpoint $T/runs/{BS}_s1/last.pt --reference $T/runs/{R20}_s1/last.pt "
        "--threads 1 --no-batched --cifar-images 64 --budget 60 "
        "--out $T/latency/latency_paper_e500_s1.json",
        f"-m benchmarks.latency --checkpoint $T/runs/{L0}_s1/last.pt --reference $T/runs/{R20}_s1/last.pt "
        "--threads 1 --no-batched --cifar-images 64 --budget 60 "
        "--out $T/latency/latency_paper_e500_l0only_s1.json",
    ]
    assert f"claim (a) waits for {BS} to finish" in res.stdout


def test_an_unknown_step_is_refused_before_anything_runs(tmp_path):
    calls, res = report(tmp_path, "tables", "analyse", done=(R20, BS))
    assert res.returncode == 2
    assert calls == []
    assert "unknown step 'analyse'" in res.stderr


def test_a_folder_without_runs_is_refused_with_the_command_that_trains_them(tmp_path):
    calls, res = report(tmp_path, "tables")
    assert res.returncode == 2 and calls == []
    assert "no 500-epoch run folders in" in res.stderr and "scripts/paper_cifar10_cpu.sh" in res.stderr
