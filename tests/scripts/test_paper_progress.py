"""scripts/paper_progress.py: the verdict on claim (a) once the paper-length runs have finished."""

import sys
from pathlib import Path

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
