"""scripts/paper_progress.py: the verdict on claim (a) once the paper-length runs have finished."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import paper_progress  # noqa: E402


def fake(run: str, model: str, bs: float, top1: float | None, macs: float, seed: int = 0) -> dict:
    summary = None if top1 is None else {"top1": top1, "macs_mean": macs}
    return {"run": run, "cfg": {"model": model, "loss": {"bs_weight": bs}, "seed": seed}, "summary": summary}


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


def gated(run: str, bs: float, target: float | None, top1: float | None, macs: float, seed: int = 0) -> dict:
    r = fake(run, "gated_resnet32", bs, top1, macs, seed)
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


def test_runs_are_judged_against_their_own_seed_and_several_seeds_get_their_mean():
    r20 = fake("r20", "resnet20", 0.0, 0.92, 40.55e6)
    r20_s1 = fake("r20_s1", "resnet20", 0.0, 0.915, 40.55e6, seed=1)
    g_s1 = gated("g_s1", 0.75, 0.585, 0.918, 40.3e6, seed=1)
    # seed 1's gated run beats seed 1's resnet20, not seed 0's; without seed 1's resnet20 there is no verdict
    assert paper_progress.verdict([r20, g_s1]) is None
    one = paper_progress.verdict([r20, r20_s1, g_s1])
    assert one.startswith("Claim (a) holds for g_s1") and "+0.30 points" in one and "over" not in one
    g = gated("g", 0.75, 0.585, 0.925, 40.2e6)
    both = paper_progress.verdict([r20, r20_s1, g, g_s1]).split("\n\n")
    assert len(both) == 3 and both[0].startswith("Claim (a) holds for g:") and "+0.50 points" in both[0]
    assert both[2] == (
        "Claim (a) over 2 seeds: +0.40 points on average (sd 0.14; per seed +0.50, +0.30), mean MAC ratio "
        "0.993; more accurate in 2 of 2 seeds."
    )
    other_target = gated("g_t", 0.75, 0.4, 0.91, 30e6, seed=1)  # another recipe is not another seed
    assert "over 2 seeds" not in paper_progress.verdict([r20, r20_s1, g, other_target])

    l0, l0_s1 = gated("l0", 0.0, 0.585, 0.93, 40.2e6), gated("l0_s1", 0.0, 0.585, 0.91, 40.3e6, seed=1)
    b = paper_progress.verdict_b([g, g_s1, l0, l0_s1]).split("\n\n")
    assert b[0].startswith("Claim (b) does not hold for g against l0 ") and "g against l0_s1" not in b[0]
    assert b[1].startswith("Claim (b) holds for g_s1 against l0_s1 ")
    assert b[2].startswith("Claim (b) over 2 seeds: +0.15 points on average") and "1 of 2 seeds." in b[2]


def write_paired(folder: Path, paired: dict) -> None:
    """folder/compare.json holding `paired` as `batchshaping compare --paired` writes it."""
    folder.mkdir(exist_ok=True)
    (folder / "compare.json").write_text(json.dumps({"paired": paired}))


def test_a_paired_test_of_the_current_weights_joins_the_verdict(tmp_path):
    r20 = fake("resnet20_e500", "resnet20", 0.0, 0.9209, 40.55e6)
    g = gated("g_e500", 0.75, 0.585, 0.9244, 40.37e6)
    l0 = gated("l0_e500", 0.0, 0.585, 0.9100, 40.3e6)
    entry = {"run": "x/g_e500", "top1": 0.9244, "n": 10000, "low": -0.0017, "high": 0.0087, "p": 0.2029}
    entry.update(only_a=374, only_b=339)
    paired = {"reference": "x/resnet20_e500", "reference_top1": 0.9209, "images": 10000, "level": 0.95}
    write_paired(tmp_path / "compare", {**paired, "runs": [entry]})
    stale = {**paired, "reference": "x/l0_e500", "reference_top1": 0.9, "runs": [{**entry, "p": 0.001}]}
    # a test of the L0-only run's older weights (92.00%, not 91.00%)
    write_paired(tmp_path / "compare_b", stale)
    (tmp_path / "compare_no_pairs").mkdir()
    (tmp_path / "compare_no_pairs" / "compare.json").write_text(json.dumps({"runs": []}))
    tests = paper_progress.paired_tests(tmp_path, [r20, g, l0])
    assert list(tests) == [("g_e500", "resnet20_e500")]
    a = paper_progress.verdict([r20, g], tests)
    assert a.endswith(
        "(+0.35 points, MAC ratio 0.996). Paired on the same 10,000 test images (374 right only in g_e500, "
        "339 only in resnet20_e500): 95% CI -0.17 to +0.87 "
        f"points, McNemar p = 0.20 ({tmp_path / 'compare' / 'compare.md'})."
    )
    assert "Paired" not in paper_progress.verdict_b([g, l0], tests)


def test_a_paired_test_whose_pass_moved_a_few_images_joins_the_verdict_and_says_so(tmp_path):
    r20 = fake("resnet20_e500", "resnet20", 0.0, 0.9209, 40.55e6)
    g = gated("g_e500", 0.75, 0.585, 0.9244, 40.37e6)
    entry = {"run": "x/g_e500", "top1": 0.9243, "n": 10000, "low": -0.0017, "high": 0.0087, "p": 0.2035}
    entry.update(only_a=375, only_b=340)
    paired = {"reference": "x/resnet20_e500", "reference_top1": 0.9208, "images": 10000, "level": 0.95}
    write_paired(tmp_path / "compare", {**paired, "runs": [entry]})
    a = paper_progress.verdict([r20, g], paper_progress.paired_tests(tmp_path, [r20, g]))
    assert "McNemar p = 0.20" in a
    assert a.endswith(
        "That pass, on another machine or thread count, scored 92.43% and 92.08%: bf16 rounding "
        "moves images that lie on a decision boundary."
    )
    # six images off the summary: not the same weights
    entry["top1"] = 0.9238
    write_paired(tmp_path / "compare", {**paired, "runs": [entry]})
    assert paper_progress.paired_tests(tmp_path, [r20, g]) == {}


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
