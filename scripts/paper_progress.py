"""Progress of the paper-length CIFAR-10 runs trained in pieces on CPU (results/cifar10_paper/<run>/):
a table of where each run stands, and a plot of test top-1 and mean MACs over training against each other
and the 36-epoch GPU runs (results/cifar10/*_e36_gpu), the top-1 after the first lr drop magnified; once
resnet20 and a batch-shaping gated run have finished, the verdict on the paper's claim (a) under the table;
once a batch-shaping and an L0-only gated run with the same MAC target have finished, the verdict on claim
(b). Runs are paired by seed (scripts/paper_cifar10_cpu.sh's SEED); with several seeds the verdicts end with
the mean over them. A verdict also gives the paired test of its two runs on the same test images where
`batchshaping compare --paired` wrote one into results/cifar10_paper/compare*/ (for claim (b): `--reference`
the L0-only run).

    python scripts/paper_progress.py            # prints the table
    python scripts/paper_progress.py --write     # and replaces it in RESULTS.md, writes the plot

Every number comes from a run's log.jsonl, config.yaml and history.jsonl (one line per training process);
nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import statistics
from itertools import pairwise
from pathlib import Path

import yaml
from export_weights import CHECK_TOL  # scripts/ is on the path of a script run from it

from batchshaping.analysis.plots import training_curves

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "results" / "cifar10_paper"
GPU36 = ROOT / "results" / "cifar10"
PLOT = PAPER / "progress.png"
MARKERS = ("<!-- paper-cpu:begin -->", "<!-- paper-cpu:end -->")
# one colour per model (gated without batch-shaping apart), CPU and GPU alike
COLORS = {"resnet20": "#4C72B0", "gated_resnet32": "#DD8452", "gated_resnet32, no BS": "#55A868"}
HEADER = (
    "| run | model | sparsity term | epochs done | last test (epoch) | top-1 | mean MMACs "
    "| ratio to resnet20 | gates on / off / cond. (%) | training time | pieces: machine, precision, step |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()] if path.exists() else []


def load(folder: Path) -> dict:
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    summary = folder / "summary.json"
    return {
        "run": folder.name,
        "cfg": cfg,
        "log": _jsonl(folder / "log.jsonl"),
        "history": _jsonl(folder / "history.jsonl"),
        "summary": json.loads(summary.read_text()) if summary.exists() else None,  # written when finished
    }


def sparsity(cfg: dict) -> str:
    loss = cfg["loss"]
    if not cfg["model"].startswith("gated_"):
        return "-"
    parts = []
    if loss.get("macs_target") is not None:
        parts.append(f"MAC target {loss['macs_target']} (weight {loss['macs_weight']:g})")
    if loss["l0_weight"] > 0:
        parts.append(f"L0 {loss['l0_weight']:g}")
    if loss["bs_weight"] > 0:
        parts.insert(0, f"BS {loss['bs_weight']:g} to {round(loss['bs_end'] * cfg['epochs'])} ep")
    else:
        parts.insert(0, "no BS")
    return ", ".join(parts)


def color(cfg: dict) -> str | None:
    no_bs = cfg["model"].startswith("gated_") and cfg["loss"]["bs_weight"] == 0
    return COLORS.get(cfg["model"] + (", no BS" if no_bs else ""))


def pieces(history: list[dict]) -> str:
    out = []
    for h in history:
        out.append(
            f"{h['from_epoch'] + 1}-{h['to_epoch']}: {h['machine'].split(',')[0]}, {h['precision']}, "
            f"{h['step']} ({h['ended']})"
        )
    return "<br>".join(out) or "-"


def hours_left(log: list[dict], epochs: int, recent: int = 20) -> float | None:
    """Training hours to the last epoch at the run's latest pace: the median time of its last ``recent``
    epochs (a piece's first epoch, which compiles, does not move the median). None when done or unknown."""
    times = [b["wall_time_s"] - a["wall_time_s"] for a, b in pairwise(log[-recent - 1 :])]
    if not times or log[-1]["epoch"] >= epochs:
        return None
    return (epochs - log[-1]["epoch"]) * statistics.median(times) / 3600


def row(r: dict, r20_macs: float) -> str:
    log, cfg = r["log"], r["cfg"]
    done = log[-1]["epoch"] if log else 0
    evals = [e for e in log if "top1" in e]
    hours = log[-1]["wall_time_s"] / 3600 if log else 0.0
    left = hours_left(log, cfg["epochs"])
    if evals:
        e = evals[-1]
        gated = cfg["model"].startswith("gated_")
        gates = (
            f"{100 * e['gates_always_on']:.1f} / {100 * e['gates_always_off']:.1f} / "
            f"{100 * e['gates_conditional']:.1f}"
            if gated
            else "-"
        )
        test = (
            f"{e['epoch']} | {100 * e['top1']:.2f}% | {e['macs_mean'] / 1e6:.2f} | "
            f"{e['macs_mean'] / r20_macs:.3f} | {gates}"
        )
    else:
        test = "- | - | - | - | -"
    return (
        f"| {r['run']} | {cfg['model']} | {sparsity(cfg)} | {done} / {cfg['epochs']} | {test} "
        f"| {hours:.1f} h{'' if left is None else f' (~{left:.1f} h left)'} | {pieces(r['history'])} |"
    )


#: claim (b) compares two runs with the same MAC budget, which each land on it only to about a percent: the
#: batch-shaping run may spend this much more than the L0-only run and still count as equal cost.
EQUAL_COST = 0.01


def judge(
    claim: str,
    subject: str,
    against: str,
    s: dict,
    base: dict,
    excess: float,
    costly: str,
    paired: dict | None = None,
) -> str:
    """One verdict: the claim holds for `subject` (test summary `s`) when it is more accurate than `base` at
    mean MACs at most `excess` (a fraction) above base's; `against` prefixes base's numbers, `costly` names
    the reason when the MACs are too high. `paired` (an entry of :func:`paired_tests`) adds how far the
    difference stands out from the noise of the test images."""
    ratio = s["macs_mean"] / base["macs_mean"]
    cheap, better = ratio <= 1 + excess, s["top1"] > base["top1"]
    why = ([] if better else ["not more accurate"]) + ([] if cheap else [costly])

    def at(x: dict) -> str:
        return f"{100 * x['top1']:.2f}% at {x['macs_mean'] / 1e6:.2f} MMACs"

    text = (
        f"Claim ({claim}) {'holds' if cheap and better else 'does not hold'} for {subject}: top-1 {at(s)} "
        f"against {against}{at(base)} ({100 * (s['top1'] - base['top1']):+.2f} points, MAC ratio {ratio:.3f})"
        + (f": {', '.join(why)}." if why else ".")
    )
    if paired:
        p = f"{paired['p']:.2f}" if paired["p"] >= 0.01 else f"{paired['p']:.1e}"
        text += (
            f" Paired on the same {paired['n']:,} test images ({paired['only_a']} right only in "
            f"{Path(paired['run']).name}, {paired['only_b']} only in {paired['reference']}): "
            f"{paired['level']:.0%} CI "
            f"{100 * paired['low']:+.2f} to {100 * paired['high']:+.2f} points, McNemar p = {p} "
            f"({paired['source']})."
        )
        if paired.get("pass"):
            a, b = (f"{100 * x:.2f}%" for x in paired["pass"])
            text += (
                f" That pass, on another machine or thread count, scored {a} and {b}: bf16 rounding moves "
                "images that lie on a decision boundary."
            )
    return text


#: A paired test re-evaluates both runs. In bf16 another CPU (AMX or not) or thread count rounds a few logits
#: differently and moves images that lie on a decision boundary: a pass may miss a run's own final top-1 by
#: as much as export_weights.py's check allows (5 of 10,000 test images) and still be a test of the same
#: weights; a test of older weights misses by far more.
PASS_TOL = CHECK_TOL


def paired_tests(folder: Path, runs: list[dict]) -> dict[tuple[str, str], dict]:
    """The paired tests of `batchshaping compare --paired` in folder/compare*/compare.json, keyed by (run,
    reference) folder names: each entry of its "runs" with "reference" (its folder name), "level", "source"
    (its compare.md) and "pass" (the test's own top-1s of run and reference when they are not the summaries';
    else None). Only tests whose top-1s are within PASS_TOL of the runs' summaries now count (a test of older
    weights is left out)."""
    top1 = {r["run"]: r["summary"]["top1"] for r in runs if r["summary"]}
    out = {}
    for path in sorted(folder.glob("compare*/compare.json")):
        paired = json.loads(path.read_text()).get("paired")
        if not paired:
            continue
        ref, n = Path(paired["reference"]).name, paired["images"]
        for e in paired["runs"]:
            run = Path(e["run"]).name
            # top-1s as counts of images: the summaries' now (None: no summary), then the test's
            tops = (top1.get(run), top1.get(ref), e["top1"], paired["reference_top1"])
            counts = [None if x is None else round(n * x) for x in tops]
            if None in counts:
                continue
            off = [abs(a - b) for a, b in zip(counts[:2], counts[2:], strict=True)]
            if max(off) > n * PASS_TOL:
                continue
            md = path.with_name("compare.md")
            source = md.relative_to(ROOT) if md.is_relative_to(ROOT) else md
            moved = tops[2:] if any(off) else None
            out[(run, ref)] = {
                **e,
                "reference": ref,
                "level": paired["level"],
                "source": str(source),
                "pass": moved,
            }
    return out


def seed(r: dict) -> int:
    return r["cfg"].get("seed", 0)


def over_seeds(claim: str, pairs: list[tuple[dict, dict]]) -> str | None:
    """With two or more seeds, a line on the mean over them of (subject, base) summary pairs, one per seed:
    one seed's margin is of the order of seed noise, the mean and the spread of the margins are what count."""
    if len(pairs) < 2:
        return None
    points = [100 * (s["top1"] - b["top1"]) for s, b in pairs]
    ratios = [s["macs_mean"] / b["macs_mean"] for s, b in pairs]
    spread = statistics.stdev(points)
    return (
        f"Claim ({claim}) over {len(pairs)} seeds: {statistics.mean(points):+.2f} points on average (sd "
        f"{spread:.2f}; per seed {', '.join(f'{x:+.2f}' for x in points)}), mean MAC ratio "
        f"{statistics.mean(ratios):.3f}; more accurate in {sum(x > 0 for x in points)} of {len(pairs)} seeds."
    )


def verdict(runs: list[dict], paired: dict[tuple[str, str], dict] | None = None) -> str | None:
    """Claim (a) once resnet20 and a batch-shaping gated_resnet32 run of the same seed have finished: is the
    gated network at or below resnet20's mean MACs more accurate? With several seeds of one recipe (MAC
    target), also the mean over them. None before."""
    done = [r for r in runs if r["summary"]]
    dense = {seed(r): r for r in done if r["cfg"]["model"] == "resnet20"}
    gated = [r for r in done if r["cfg"]["model"].startswith("gated_") and r["cfg"]["loss"]["bs_weight"] > 0]
    costly = "above resnet20's MACs"
    lines, pairs = [], {}
    for r in gated:
        if seed(r) not in dense:
            continue
        d, test = dense[seed(r)]["summary"], (paired or {}).get((r["run"], dense[seed(r)]["run"]))
        lines.append(judge("a", r["run"], "resnet20's ", r["summary"], d, 0.0, costly, test))
        pairs.setdefault(r["cfg"]["loss"].get("macs_target"), []).append((r["summary"], d))
    means = [m for m in (over_seeds("a", p) for p in pairs.values()) if m]
    return "\n\n".join(lines + means) or None


def verdict_b(runs: list[dict], paired: dict[tuple[str, str], dict] | None = None) -> str | None:
    """Claim (b) once a batch-shaping and an L0-only (bs_weight 0) gated run with the same MAC target and
    seed have finished: is batch-shaping more accurate at equal cost (MACs at most EQUAL_COST above)? With
    several seeds of one target, also the mean over them. None before."""
    done = [r for r in runs if r["summary"] and r["cfg"]["model"].startswith("gated_")]
    lines, pairs = [], {}
    for bs in (r for r in done if r["cfg"]["loss"]["bs_weight"] > 0):
        target = bs["cfg"]["loss"].get("macs_target")
        for l0 in (r for r in done if r["cfg"]["loss"]["bs_weight"] == 0):
            if target is None or l0["cfg"]["loss"].get("macs_target") != target or seed(l0) != seed(bs):
                continue
            subject = f"{bs['run']} against {l0['run']} (MAC target {target})"
            costly = f"more than {100 * EQUAL_COST:.0f}% more MACs"
            test = (paired or {}).get((bs["run"], l0["run"]))
            lines.append(judge("b", subject, "", bs["summary"], l0["summary"], EQUAL_COST, costly, test))
            pairs.setdefault(target, []).append((bs["summary"], l0["summary"]))
    means = [m for m in (over_seeds("b", p) for p in pairs.values()) if m]
    return "\n\n".join(lines + means) or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="replace the table in RESULTS.md, write the plot")
    args = ap.parse_args()
    runs = [load(d) for d in sorted(PAPER.iterdir()) if (d / "config.yaml").exists()]
    r20 = next(r for r in runs if r["cfg"]["model"] == "resnet20" and r["log"])
    r20_macs = next(e["macs_mean"] for e in r20["log"] if "macs_mean" in e)
    table = "\n".join([HEADER, *(row(r, r20_macs) for r in runs)])
    paired = paired_tests(PAPER, runs)
    for claim in (verdict(runs, paired), verdict_b(runs, paired)):
        if claim:
            table += "\n\n" + claim
    print(table)
    if not args.write:
        return
    curves = []
    for r in runs:
        # seeds share their model's colour; seed 0 round markers, the others square
        style = {"color": color(r["cfg"]), "marker": "s" if seed(r) else "o", "ms": 3}
        curves.append({"label": r["run"], "epochs": r["cfg"]["epochs"], "log": r["log"], "style": style})
    for d in sorted(GPU36.glob("*_e36_gpu")):
        if d.name.startswith(("resnet20", "gated_resnet32_bs_")):
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            style = {"color": color(cfg), "ls": "--", "lw": 1.0}
            log = _jsonl(d / "log.jsonl")
            curves.append({"label": d.name, "epochs": cfg["epochs"], "log": log, "style": style})
    title = "CIFAR-10, the paper's recipe: 500-epoch runs on CPU (solid) and 36-epoch GPU runs (dashed)"
    training_curves(curves, r20_macs, title, PLOT)
    text = (ROOT / "RESULTS.md").read_text()
    begin, end = MARKERS
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    (ROOT / "RESULTS.md").write_text(f"{head}{begin}\n{table}\n{end}{tail}")
    print(f"wrote {PLOT.relative_to(ROOT)} and the table in RESULTS.md")


if __name__ == "__main__":
    main()
