"""Build the measured-results tables of RESULTS.md, and the headline of README.md, from
results/cifar10/<run>/{summary.json,config.yaml} and the finished runs of the paper's recipe trained in
pieces on CPU (results/cifar10_paper/, scripts/paper_cifar10_cpu.sh).

    python scripts/results_table.py            # prints the tables and the headline
    python scripts/results_table.py --write    # replaces them between their markers in RESULTS.md / README.md

The runs of scripts/macs_target_cifar10.sh (results/cifar10_macs_target/) get a table of how close each
landed on its MAC budget.

The runs of the fine-tuning protocol (scripts/finetune_cifar10.sh: dense resnet32, resnet20 for the same
total epochs, gated_resnet32 fine-tuned from the dense resnet32) are in results/cifar10_finetune/ and get a
table of their own.

One table per protocol (epoch count, device kind, CPU fp32 or GPU bf16, and recipe: the protocol's short
recipes or, for runs named <name>_paper_e<N>..., the paper's recipes of RECIPE=paper), longest protocol
first: runs of different protocols are not compared.
The headline is, for the longest protocol that has both, dense resnet20 against the most accurate
gated_resnet32 run with batch-shaping whose mean MACs are at most resnet20's (if none is, the cheapest
such run), with the difference in top-1 and the ratio of their MACs; and, where one of the same seed is at
most resnet20's MACs too, the most accurate gated_resnet32 run without batch-shaping (claim (b)).
Every number comes from a run's summary.json (written by ``batchshaping train``); nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

import batchshaping as bs

ROOT = Path(__file__).resolve().parent.parent
MARKERS = {
    "RESULTS.md": ("<!-- results-table:begin -->", "<!-- results-table:end -->"),
    "README.md": ("<!-- headline:begin -->", "<!-- headline:end -->"),
    "finetune": ("<!-- finetune-table:begin -->", "<!-- finetune-table:end -->"),
    "macs_target": ("<!-- macs-target-table:begin -->", "<!-- macs-target-table:end -->"),
}
MACS_TARGET_HEADER = (
    "| run | MAC target | budget as trained | test mean MAC ratio | off the target | top-1 | mean MMACs "
    "| gates on / off / cond. (%) | wall time | machine | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)
FINETUNE_HEADER = (
    "| run | model | start | BS weight (phase) | L0 weight | epochs (total) | top-1 | mean MMACs "
    "| ratio to resnet20 | gates on / off / cond. (%) | wall time | machine | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)
HEADER = (
    "| run | model | BS weight (phase) | L0 weight | top-1 | mean MMACs | ratio to own dense "
    "| ratio to resnet20 | gates on / off / cond. (%) | epochs | wall time | machine | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def load_runs(results: Path, pieces: bool = False) -> list[dict]:
    """One dict per finished run folder: name, summary, config, whether gated, and ``pieces``: a run of the
    paper's recipe trained in pieces by scripts/paper_cifar10_cpu.sh (results/cifar10_paper/)."""
    runs = []
    for d in sorted(p for p in results.iterdir() if (p / "summary.json").exists()):
        s = json.loads((d / "summary.json").read_text())
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        gated = bs.model_info(s["model"]).gated
        history = d / "history.jsonl"
        # trained in pieces, maybe on several machines: say which epochs ran where
        if pieces and history.exists():
            lines = history.read_text().splitlines()
            s = {**s, "machine": machines([json.loads(line) for line in lines if line.strip()], s)}
        runs.append({"run": d.name, "s": s, "cfg": cfg, "gated": gated, "pieces": pieces})
    return runs


def row(r: dict, r20_macs: float) -> str:
    s, cfg, gated = r["s"], r["cfg"], r["gated"]
    gates = (
        f"{100 * s['gates_always_on']:.1f} / {100 * s['gates_always_off']:.1f} / "
        f"{100 * s['gates_conditional']:.1f}"
        if gated
        else "-"
    )
    epochs, name = s["epochs"], r["run"].rsplit("_e", 1)[0].removesuffix("_paper")
    seed = cfg.get("seed", 0)
    env = f"SEED={seed} EPOCHS={epochs}" if seed else f"EPOCHS={epochs}"
    if paper(r):  # EPOCHS defaults to the recipe's 500 there
        env = "RECIPE=paper" + (f" SEED={seed}" if seed else "")
        env += "" if epochs == 500 else f" EPOCHS={epochs}"
    if s["device"] != "cpu":
        env += f" DEVICE={s['device']}"
    loss = cfg["loss"]
    if not gated:
        bs = l0 = "-"
    else:
        bs = f"{loss['bs_weight']} (first {loss['bs_end']:.0%})" if loss["bs_weight"] else "0"
        l0 = loss["l0_weight"]
        if loss.get("macs_target") is not None:
            l0 = f"{l0} (MAC target {loss['macs_target']})"
    command = f"{env} bash scripts/reproduce_cifar10.sh {name}"
    if r["pieces"]:  # repeated until the runs finish
        command = ("" if not seed else f"SEED={seed} ") + "MAX_TIME=2h30m bash scripts/paper_cifar10_cpu.sh"
    return (
        f"| {r['run']} | {s['model']} | {bs} | {l0} | {100 * s['top1']:.2f}% | "
        f"{s['macs_mean'] / 1e6:.2f} | "
        f"{s['mac_ratio']:.3f} | {s['macs_mean'] / r20_macs:.3f} | {gates} | {epochs} | "
        f"{wall(s['wall_time_s'])} | {machine(s)} ({s['precision']}) | "
        f"`{command}` |"
    )


def machine(s: dict) -> str:
    """The summary's machine (its device before machine was recorded); runs written before the package said
    "1 thread" read "1 threads"."""
    return s.get("machine", s["device"]).replace(" 1 threads", " 1 thread")


def machines(history: list[dict], s: dict) -> str:
    """The summary's machine, or, when the pieces of history.jsonl (one line per process: from_epoch,
    to_epoch, machine "<cpu>, <n> cores, <k> threads") ran on several CPUs, each CPU with its epochs: the
    summary names only the last piece's."""
    spans: list[list] = []  # [cpu, first epoch, last epoch]
    for h in history:
        cpu = h["machine"].split(", ")[0]
        if spans and spans[-1][0] == cpu:
            spans[-1][2] = h["to_epoch"]
        else:
            spans.append([cpu, h["from_epoch"] + 1, h["to_epoch"]])
    if len(spans) < 2:
        return s["machine"]
    cores = s["machine"].split(", ")[1]
    return "; ".join(f"{cpu}, epochs {a}-{b}" for cpu, a, b in spans) + f"; {cores}"


def wall(seconds: float) -> str:
    """Minutes, or hours from two hours on (a 500-epoch run on CPU trains for about half a day)."""
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def paper(r: dict) -> bool:
    """A run of the paper's recipes (scripts/reproduce_cifar10.sh with RECIPE=paper, or trained in pieces)."""
    return r["pieces"] or "_paper_e" in r["run"]


def protocol(r: dict) -> tuple[int, str, str]:
    """(epochs, "GPU" | "CPU", recipe): runs are compared only within one protocol."""
    kind = "CPU" if r["s"]["device"] == "cpu" else "GPU"
    return r["s"]["epochs"], kind, "paper's recipe" if paper(r) else "protocol"


def protocols(runs: list[dict]) -> list[tuple[int, str]]:
    return sorted({protocol(r) for r in runs}, reverse=True)


def title(p: tuple[int, str, str]) -> str:
    kind = "runs of the paper's recipe" if p[2] == "paper's recipe" else "protocol"
    return f"{p[0]}-epoch {p[1]} {kind}"


def tables(runs: list[dict], r20_macs: float) -> str:
    parts = []
    for p in protocols(runs):
        parts.append(f"**{title(p)}**\n\n{HEADER}")
        parts[-1] += "".join("\n" + row(r, r20_macs) for r in runs if protocol(r) == p)
    return "\n\n".join(parts)


def headline(runs: list[dict], r20_macs: float) -> str:
    """resnet20 against a batch-shaping gated_resnet32 run of the longest protocol that has both, of the same
    seed: the most accurate one at or below resnet20's MACs, else (none is) the cheapest, and how the two
    compare; then the most accurate run of that seed without batch-shaping at or below resnet20's MACs."""
    for p in protocols(runs):
        dense = [r for r in runs if protocol(r) == p and r["s"]["model"] == "resnet20"]
        seeds = [r["cfg"].get("seed", 0) for r in dense[:1]]  # the first resnet20 run's seed (sorted: 0)
        same = [
            r
            for r in runs
            if protocol(r) == p and r["s"]["model"] == "gated_resnet32" and r["cfg"].get("seed", 0) in seeds
        ]
        gated = [r for r in same if r["cfg"]["loss"]["bs_weight"] > 0]
        if not dense or not gated:
            continue
        d = dense[0]["s"]
        # the same gated network trained with the sparsity term alone (claim (b)), if one is within the budget
        alone = [
            r for r in same if r["cfg"]["loss"]["bs_weight"] == 0 and r["s"]["macs_mean"] <= d["macs_mean"]
        ]
        within = [r for r in gated if r["s"]["macs_mean"] <= d["macs_mean"]]
        if within:
            best = max(within, key=lambda r: r["s"]["top1"])
            which = (
                f"the most accurate of the {len(within)} batch-shaping gated_resnet32 runs"
                if len(within) > 1
                else "the batch-shaping gated_resnet32 run"
            ) + " at or below resnet20's MACs"
        else:
            best = min(gated, key=lambda r: r["s"]["macs_mean"])
            which = (
                f"the cheapest of the {len(gated)} batch-shaping gated_resnet32 runs, none of which is"
                if len(gated) > 1
                else "the batch-shaping gated_resnet32 run, which is not"
            ) + " at or below resnet20's MACs"
        text = (
            f"Headline ({title(p)}, CIFAR-10; every row and its command are in RESULTS.md). The "
            f"{'first ' if alone else ''}gated row is {which}: {against(best, d)}."
        )
        rows = [row(dense[0], r20_macs), row(best, r20_macs)]
        if alone:
            other = max(alone, key=lambda r: r["s"]["top1"])
            text += (
                " The last is the same network trained without batch-shaping (the sparsity term alone, the "
                f"paper's claim (b)), at or below resnet20's MACs too: {against(other, d)}."
            )
            rows.append(row(other, r20_macs))
        return text + "\n\n" + HEADER + "\n" + "\n".join(rows)
    return "No protocol has both a resnet20 run and a batch-shaping gated_resnet32 run yet."


def against(r: dict, dense: dict) -> str:
    """A gated run's top-1 and mean MACs said against resnet20's summary ``dense``."""
    s = r["s"]
    points, ratio = 100 * (s["top1"] - dense["top1"]), s["macs_mean"] / dense["macs_mean"]
    return f"{points:+.2f} points of top-1 against resnet20 at {ratio:.4f} times its mean MACs"


def finetune_row(r: dict, r20_macs: float, f: int) -> str:
    """A run of scripts/finetune_cifar10.sh (``f``: the fine-tunes' epochs); its command is rebuilt from its
    config."""
    s, cfg = r["s"], r["cfg"]
    start = Path(cfg["pretrained"]).parent.name if cfg.get("pretrained") else "scratch"
    e0 = int(start.rsplit("_e", 1)[1]) if start != "scratch" else 0
    if r["gated"]:
        loss = cfg["loss"]
        bs, l0 = f"{loss['bs_weight']} (first {loss['bs_end']:.0%})", loss["l0_weight"]
        gates = "{:.1f} / {:.1f} / {:.1f}".format(
            *(100 * s[k] for k in ("gates_always_on", "gates_always_off", "gates_conditional"))
        )
        bs_env = "" if loss["bs_weight"] == 0.75 else f"BS={loss['bs_weight']} "
        cmd = f'{bs_env}E={e0} F={s["epochs"]} L0="{l0}" bash scripts/finetune_cifar10.sh finetune'
    else:
        bs = l0 = gates = "-"
        n = s["epochs"]
        cmd = (
            f"E={n} bash scripts/finetune_cifar10.sh dense"
            if s["model"] == "resnet32"
            else f"E={n - f} F={f} bash scripts/finetune_cifar10.sh resnet20"
        )
    return (
        f"| {r['run']} | {s['model']} | {start} | {bs} | {l0} | {s['epochs']} ({e0 + s['epochs']}) | "
        f"{100 * s['top1']:.2f}% | {s['macs_mean'] / 1e6:.2f} | {s['macs_mean'] / r20_macs:.3f} | {gates} | "
        f"{wall(s['wall_time_s'])} | {machine(s)} ({s['precision']}) | `{cmd}` |"
    )


def finetune_table(runs: list[dict], r20_macs: float) -> str:
    order = sorted(runs, key=lambda r: (r["gated"], r["s"]["model"], r["run"]))
    f = next((r["s"]["epochs"] for r in runs if r["gated"]), 0)
    return FINETUNE_HEADER + "".join("\n" + finetune_row(r, r20_macs, f) for r in order)


#: The commit whose code trained each earlier form of the budget (runs named ..._expected_..., _threshold_).
VARIANT_CODE = {"_expected_": "e27bf71", "_threshold_": "af35359"}


def macs_target_row(r: dict) -> str:
    """A run of scripts/macs_target_cifar10.sh. The budget's earlier forms are kept for comparison, named
    ``..._expected_...`` (the expected MACs of the training batches, no calibration) and ``..._threshold_...``
    (gates thresholded at p > 0.5 in training mode, no calibration); their command checks out the commit
    whose code trained them (VARIANT_CODE)."""
    s, loss, data = r["s"], r["cfg"]["loss"], r["cfg"]["data"]
    target, ratio = loss["macs_target"], s["mac_ratio"]
    count = (
        "expected MACs, no calibration"
        if "_expected_" in r["run"]
        else "thresholded in training mode, no calibration"
        if "_threshold_" in r["run"]
        else "expected MACs, calibrated in evaluation mode"
    )
    gates = "{:.1f} / {:.1f} / {:.1f}".format(
        *(100 * s[k] for k in ("gates_always_on", "gates_always_off", "gates_conditional"))
    )
    cmd = (
        f'N={data["train_subset"]} TARGETS="{target}" WEIGHT={loss["macs_weight"]:g} EPOCHS={s["epochs"]} '
        "THREADS=1 bash scripts/macs_target_cifar10.sh"
    )
    commit = next((c for tag, c in VARIANT_CODE.items() if tag in r["run"]), None)
    if commit is not None:
        cmd = f"git checkout {commit} && {cmd}"
    return (
        f"| {r['run']} | {target} | {count} | {ratio:.4f} | {100 * (ratio / target - 1):+.1f}% | "
        f"{100 * s['top1']:.2f}% | {s['macs_mean'] / 1e6:.2f} | {gates} | {wall(s['wall_time_s'])} | "
        f"{machine(s)} ({s['precision']}) | `{cmd}` |"
    )


def macs_target_table(runs: list[dict]) -> str:
    order = sorted(runs, key=lambda r: (r["cfg"]["loss"]["macs_target"], r["run"]))
    return MACS_TARGET_HEADER + "".join("\n" + macs_target_row(r) for r in order)


def replace(path: Path, begin: str, end: str, body: str) -> None:
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin} ... {end}: add them where the text should go")
    pattern = f"{re.escape(begin)}.*?{re.escape(end)}"
    path.write_text(re.sub(pattern, f"{begin}\n{body}\n{end}", text, flags=re.S))
    print(f"updated {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "cifar10")
    ap.add_argument("--paper", type=Path, default=ROOT / "results" / "cifar10_paper")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    r20_macs = bs.dense_macs(bs.create_model("resnet20"), (3, 32, 32))
    runs = load_runs(args.results)
    if args.paper.is_dir():
        runs += load_runs(args.paper, pieces=True)
    finetune = args.results.parent / "cifar10_finetune"
    body = {"RESULTS.md": tables(runs, r20_macs), "README.md": headline(runs, r20_macs)}
    if finetune.is_dir():
        body["finetune"] = finetune_table(load_runs(finetune), r20_macs)
    macs_target = args.results.parent / "cifar10_macs_target"
    if macs_target.is_dir():
        body["macs_target"] = macs_target_table(load_runs(macs_target))
    for key, text in body.items():
        if args.write:
            replace(ROOT / (key if key.endswith(".md") else "RESULTS.md"), *MARKERS[key], text)
        else:
            print(text, end="\n\n")


if __name__ == "__main__":
    main()
