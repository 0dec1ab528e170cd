"""Publish the final weights of finished runs: a model-only copy of each run's last.pt (no optimizer, loss
scaler or RNG state: a third of the size, still loaded by ``batchshaping eval`` / ``analyze`` /
``batchshaping.load_model``) and an entry in ``<out>/manifest.json`` with its sha256 and what it scores.

    python scripts/export_weights.py results/cifar10_paper/resnet20_e500 ... --out weights/cifar10

Each run folder must hold a finished run (summary.json, written when training ends). The manifest keeps the
entries of other runs; an exported run's entry is replaced. Every number comes from the run's own files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from batchshaping.checkpoint import atomic_save, load_checkpoint

#: Checkpoint keys that only training needs.
TRAINING_ONLY = ("optimizer", "scaler", "rng")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(run: Path, out: Path) -> dict[str, Any]:
    """Write ``out/<run name>.pt`` (model only) and return its manifest entry."""
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"{run}: no summary.json, so the run has not finished; train it to its end first")
    summary = json.loads(summary_path.read_text())
    ckpt = load_checkpoint(run / "last.pt")
    dest = out / f"{run.name}.pt"
    atomic_save({k: v for k, v in ckpt.items() if k not in TRAINING_ONLY}, dest)
    history = (
        [json.loads(s) for s in (run / "history.jsonl").read_text().splitlines()]
        if (run / "history.jsonl").is_file()
        else []
    )
    metrics = {
        k: summary[k]
        for k in ("top1", "top5", "miou", "macs_mean", "macs_dense", "mac_ratio")
        if k in summary
    }
    return {
        "run": run.name,
        "file": dest.as_posix(),
        "bytes": dest.stat().st_size,
        "sha256": sha256(dest),
        "model": summary["model"],
        "config": summary["config"],
        "epochs": ckpt["epoch"],
        **metrics,
        "trained_on": sorted({h["machine"] for h in history}) or [summary.get("machine")],
        "precision": summary.get("precision"),
        "source_commit": ckpt.get("git_commit"),
        "checkpoint_sha256": sha256(run / "last.pt"),
        "evaluate": f"batchshaping eval {dest.as_posix()}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders (summary.json, last.pt)")
    ap.add_argument("--out", type=Path, default=Path("weights/cifar10"), help="folder of the weights")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    index = args.out / "manifest.json"
    listed = {e["run"]: e for e in json.loads(index.read_text())["weights"]} if index.is_file() else {}
    for run in args.runs:
        entry = export(run, args.out)
        listed[entry["run"]] = entry
        print(f"wrote {entry['file']} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:12]}...)")
    body = {"weights": sorted(listed.values(), key=lambda e: e["run"])}
    index.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
