"""Build the measured-results table of RESULTS.md from results/cifar10/<run>/{summary,config}.json|yaml.

    python scripts/results_table.py            # prints the markdown table
    python scripts/results_table.py --write    # replaces the table between the markers in RESULTS.md

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
BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"


def rows(results: Path) -> list[str]:
    r20 = bs.dense_macs(bs.create_model("resnet20"), (3, 32, 32))
    out = [
        "| run | model | BS weight | L0 weight | top-1 | mean MMACs | ratio to own dense | ratio to resnet20 "
        "| gates on / off / cond. (%) | epochs | wall time | machine | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in sorted(p for p in results.iterdir() if (p / "summary.json").exists()):
        s = json.loads((d / "summary.json").read_text())
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        gated = bs.model_info(s["model"]).gated
        gates = (
            f"{100 * s['gates_always_on']:.1f} / {100 * s['gates_always_off']:.1f} / "
            f"{100 * s['gates_conditional']:.1f}"
            if gated
            else "-"
        )
        run, epochs = d.name, s["epochs"]
        name = run.rsplit("_e", 1)[0]
        out.append(
            f"| {run} | {s['model']} | {cfg['loss']['bs_weight'] if gated else '-'} | "
            f"{cfg['loss']['l0_weight'] if gated else '-'} | {100 * s['top1']:.2f}% | "
            f"{s['macs_mean'] / 1e6:.2f} | "
            f"{s['mac_ratio']:.3f} | {s['macs_mean'] / r20:.3f} | {gates} | {epochs} | "
            f"{s['wall_time_s'] / 60:.0f} min | {s.get('machine', s['device'])} ({s['precision']}) | "
            f"`EPOCHS={epochs} bash scripts/reproduce_cifar10.sh {name}` |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results" / "cifar10")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    table = "\n".join(rows(args.results))
    if not args.write:
        print(table)
        return
    path = ROOT / "RESULTS.md"
    text = path.read_text()
    new = re.sub(f"{re.escape(BEGIN)}.*?{re.escape(END)}", f"{BEGIN}\n{table}\n{END}", text, flags=re.S)
    path.write_text(new)
    print(f"updated {path}")


if __name__ == "__main__":
    main()
