"""scripts/paper_cifar10_cpu.sh: which runs a piece trains, with how many threads and how much time.

The training command is replaced by a stand-in (PYTHON=a script) that records its arguments, writes last.pt
and, for the runs named in $FINISH, summary.json, as a run that reached its last epoch would.
"""

import os
import subprocess
import sys
from pathlib import Path

from tests.scripts.conftest import stage_runs

ROOT = Path(__file__).resolve().parents[2]
R20, BS, L0 = "resnet20_e500", "gated_resnet32_budget0.585_e500", "gated_resnet32_l0only_budget0.585_e500"

FAKE_PYTHON = f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi
out=$(echo "$@" | sed -E 's/.*--out ([^ ]+).*/\\1/')
run=$(basename "$out")
echo "$run $*" >>"$CALLS"
mkdir -p "$out" && touch "$out/last.pt"
case " $FINISH " in *" $run "*) echo {{}} >"$out/summary.json" ;; esac
"""


def piece(
    tmp: Path,
    finish: str = "",
    done: tuple[str, ...] = (),
    started: tuple[str, ...] = (),
    min_start: int = 900,
    seed: str | None = None,
    seeds: str | None = None,
) -> list[str]:
    """Run the script once; the training calls it made, one line each: '<run> <arguments>'."""
    fake, out, calls = stage_runs(tmp, FAKE_PYTHON, done, started)
    env = dict(os.environ, PYTHON=str(fake), OUT=str(out), CORES="2", MAX_TIME="2h", FINISH=finish)
    env["MIN_START"] = str(min_start)
    env["CALLS"] = str(calls)
    if seed is not None:
        env["SEED"] = seed
    if seeds is not None:
        env["SEEDS"] = seeds
    script = ROOT / "scripts/paper_cifar10_cpu.sh"
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return sorted(calls.read_text().splitlines())


def test_a_new_piece_starts_both_runs_with_one_thread_each_and_the_whole_time(tmp_path: Path):
    calls = piece(tmp_path)
    assert [c.split()[0] for c in calls] == [BS, R20]
    for c in calls:
        assert "--config" in c and "--set threads=1" in c
        left = int(c.split("--set max_time=")[1].split()[0])
        assert 7100 <= left <= 7200  # MAX_TIME=2h, counted from the script's start
    assert "--set step=compile" in calls[0] and "step=compile" not in calls[1]


def test_the_l0_only_run_starts_as_soon_as_the_budget_run_finishes_within_the_piece(tmp_path: Path):
    calls = piece(tmp_path, finish=BS, started=(R20, BS))
    assert [c.split()[0] for c in calls] == [BS, L0, R20]
    l0 = next(c for c in calls if c.startswith(L0))
    assert "--config cifar10_gated_resnet32_l0only_budget" in l0 and "--set step=compile" in l0
    assert "--set threads=1" in l0  # resnet20 still trains beside it
    assert all("--resume" in c for c in calls if not c.startswith(L0))
    assert [c.split()[0] for c in piece(tmp_path / "r20", finish=R20, started=(R20, BS))] == [BS, R20]


def test_once_resnet20_has_finished_the_gated_runs_get_every_core_one_after_the_other(tmp_path: Path):
    calls = piece(tmp_path, done=(R20,), started=(BS, L0))
    assert len(calls) == 1 and calls[0].startswith(BS) and "--set threads=2" in calls[0]
    calls = piece(tmp_path / "then", finish=BS, done=(R20,), started=(BS, L0))
    assert [c.split()[0] for c in calls] == [BS, L0] and all("--set threads=2" in c for c in calls)


def test_the_last_unfinished_run_gets_every_core_and_finished_runs_are_skipped(tmp_path: Path):
    calls = piece(tmp_path, done=(R20, BS), started=(L0,))
    assert len(calls) == 1 and calls[0].startswith(L0)
    assert "--resume" in calls[0] and "--set threads=2" in calls[0]
    assert piece(tmp_path / "again", done=(R20, BS, L0)) == []


def test_no_run_starts_with_less_time_left_than_a_compilation_and_an_epoch(tmp_path: Path):
    assert piece(tmp_path, started=(R20, BS), min_start=3 * 3600) == []  # more than MAX_TIME


def test_another_seed_trains_the_same_runs_in_their_own_folders(tmp_path: Path):
    calls = piece(tmp_path, done=(R20, BS, L0), seed="1")  # seed 0's finished runs do not count
    assert [c.split()[0] for c in calls] == [BS + "_s1", R20 + "_s1"]
    assert all("--set seed=1" in c and "--set threads=1" in c for c in calls)
    assert all(f"/{c.split()[0]} " in c for c in calls)  # --out is the seed's own folder
    assert "--set seed=0" in piece(tmp_path / "default")[0]
    calls = piece(tmp_path / "later", finish=BS + "_s1", done=(R20 + "_s1",), started=(BS + "_s1",), seed="1")
    assert [c.split()[0] for c in calls] == [BS + "_s1", L0 + "_s1"]
    assert "--resume" in calls[0] and "--set seed=1" in calls[1] and "--set threads=2" in calls[1]


def test_a_seed_that_is_not_a_number_is_refused_before_anything_runs(tmp_path: Path):
    fake, out, _ = stage_runs(tmp_path, FAKE_PYTHON)
    env = dict(os.environ, PYTHON=str(fake), OUT=str(out), SEED="one", CALLS=str(tmp_path / "c"))
    res = subprocess.run(
        ["bash", str(ROOT / "scripts/paper_cifar10_cpu.sh")], env=env, capture_output=True, text=True
    )
    assert res.returncode == 2 and "SEED and SEEDS take non-negative integers, got 'one'" in res.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "c").exists()


def test_seeds_train_one_after_the_other_and_the_next_waits_for_the_last_to_finish(tmp_path: Path):
    s1 = (R20 + "_s1", BS + "_s1", L0 + "_s1")
    # seed 0's last run trains on; seed 1 waits
    calls = piece(tmp_path, done=(R20, BS), started=(L0,), seeds="0 1")
    assert len(calls) == 1 and calls[0].startswith(L0) and "--set threads=2" in calls[0]
    # it finishes within the piece: seed 1 starts at once, its two lanes on one core each
    calls = piece(tmp_path / "next", finish=L0, done=(R20, BS), started=(L0,), seeds="0 1")
    assert [c.split()[0] for c in calls] == [s1[1], L0, s1[0]]
    assert all("--set seed=1" in c and "--set threads=1" in c for c in calls if "_s1" in c)
    # everything of seed 0 finished: seed 1's runs start as with SEED=1
    calls = piece(tmp_path / "later", done=(R20, BS, L0), seeds="0 1")
    assert [c.split()[0] for c in calls] == [s1[1], s1[0]] and all("--set seed=1" in c for c in calls)
