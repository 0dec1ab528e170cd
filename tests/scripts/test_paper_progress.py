"""scripts/paper_progress.py: the verdict on claim (a) once the paper-length runs have finished."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import paper_progress  # noqa: E402


def fake(run: str, model: str, bs: float, top1: float | None, macs: float) -> dict:
    summary = None if top1 is None else {"top1": top1, "macs_mean": macs}
    return {"run": run, "cfg": {"model": model, "loss": {"bs_weight": bs}}, "summary": summary}


def test_the_verdict_waits_for_both_runs_and_needs_more_accuracy_at_no_more_macs():
    r20 = fake("resnet20_e500", "resnet20", 0.0, 0.915, 40.55e6)
    assert paper_progress.verdict([r20, fake("g", "gated_resnet32", 0.75, None, 0.0)]) is None
    holds = paper_progress.verdict([r20, fake("g", "gated_resnet32", 0.75, 0.921, 40.2e6)])
    assert holds.startswith("Claim (a) holds for g: top-1 92.10% at 40.20 MMACs against resnet20's 91.50%")
    assert "+0.60 points, MAC ratio 0.991" in holds
    costly = paper_progress.verdict([r20, fake("g", "gated_resnet32", 0.75, 0.93, 41e6)])
    assert costly.startswith("Claim (a) does not hold for g") and costly.endswith(": above resnet20's MACs.")
    worse = paper_progress.verdict([r20, fake("g", "gated_resnet32", 0.75, 0.9, 40e6)])
    assert worse.endswith(": not more accurate.")
    no_bs = fake("l0", "gated_resnet32", 0.0, 0.95, 30e6)  # the ablation is not claim (a)'s gated network
    assert paper_progress.verdict([r20, no_bs]) is None


def gated(run: str, bs: float, target: float | None, top1: float | None, macs: float) -> dict:
    r = fake(run, "gated_resnet32", bs, top1, macs)
    r["cfg"]["loss"]["macs_target"] = target
    return r


def test_claim_b_pairs_runs_of_one_mac_target_and_needs_more_accuracy_at_equal_cost():
    bs_run = gated("bs", 0.75, 0.585, 0.92, 40.2e6)
    assert paper_progress.verdict_b([bs_run, gated("l0", 0.0, 0.585, None, 0.0)]) is None  # not finished
    assert paper_progress.verdict_b([bs_run, gated("l0", 0.0, 0.4, 0.9, 30e6)]) is None  # another budget
    holds = paper_progress.verdict_b([bs_run, gated("l0", 0.0, 0.585, 0.91, 40.0e6)])
    assert holds.startswith("Claim (b) holds for bs against l0 (MAC target 0.585): top-1 92.00% at 40.20")
    assert "+1.00 points, MAC ratio 1.005)." in holds  # within EQUAL_COST of the L0-only run's MACs
    costly = paper_progress.verdict_b([bs_run, gated("l0", 0.0, 0.585, 0.91, 39e6)])
    assert costly.startswith("Claim (b) does not hold") and costly.endswith(": more than 1% more MACs.")
    worse = paper_progress.verdict_b([bs_run, gated("l0", 0.0, 0.585, 0.93, 40.2e6)])
    assert worse.endswith(": not more accurate.")


def test_hours_left_go_by_the_median_of_the_latest_epochs():
    # 10 epochs of 100 s, then a piece whose first epoch compiled for 400 s, then 90 s epochs
    times = [100.0] * 10 + [400.0] + [90.0] * 9
    log = [{"epoch": i + 1, "wall_time_s": sum(times[: i + 1])} for i in range(len(times))]
    assert paper_progress.hours_left(log, 20) is None  # finished
    assert paper_progress.hours_left(log[:1], 500) is None  # no pace yet
    assert paper_progress.hours_left(log[:3], 500) == pytest.approx(497 * 100 / 3600)  # a short log
    # the last 20 diffs: 9 x 100, 400, 9 x 90 -> median 100 s; 480 epochs to go
    assert paper_progress.hours_left(log, 500) == pytest.approx(480 * 100 / 3600)
    assert paper_progress.hours_left(log, 500, recent=9) == pytest.approx(480 * 90 / 3600)
