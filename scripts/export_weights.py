"""Publish the final weights of finished runs: a model-only copy of each run's last.pt (no optimizer, loss
scaler or RNG state: a third of the size, still loaded by ``batchshaping eval`` / ``analyze`` /
``batchshaping.load_model``) and an entry in ``<out>/manifest.json`` with its sha256 and what it scores.

    python scripts/export_weights.py results/cifar10_paper/resnet20_e500 ... --out weights/cifar10 \
        --check --data-dir ../shared/data/cifar10

Each run folder must hold a finished run (summary.json, written when training ends). The manifest keeps the
entries of other runs; an exported run's entry is replaced. Every number comes from the run's own files.

``--check`` then evaluates every exported file as ``batchshaping eval`` does (its data set's test split,
``--data-dir`` else where the run trained; the run's data.test_subset if it had one) and records in its entry
what that gave, next to the run's own numbers; it fails unless they agree (top-1 / mIoU within CHECK_TOL, mean
MACs within CHECK_MACS_RTOL).
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

#: --check: how far `batchshaping eval` of the exported weights may land from the run's own final evaluation.
#: The same weights, precision, layout and batches give the same numbers; another CPU or thread count may
#: round a few bf16 gate logits across the threshold: 5 of 10,000 test images, 0.05% of the MACs.
CHECK_TOL, CHECK_MACS_RTOL = 5e-4, 5e-4


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
        # what the numbers were measured on: the whole test split (null) or its first test_subset images
        "test_subset": ckpt["config"]["data"].get("test_subset"),
        "trained_on": sorted({h["machine"] for h in history}) or [summary.get("machine")],
        "precision": summary.get("precision"),
        "source_commit": ckpt.get("git_commit"),
        "checkpoint_sha256": sha256(run / "last.pt"),
        "evaluate": f"batchshaping eval {dest.as_posix()}",
    }


def check(entry: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """``batchshaping eval`` of the exported file: its numbers, their differences from the run's, and ok."""
    from batchshaping.experiment import evaluate_checkpoint
    from batchshaping.runtime import machine_description, resolve_device

    metrics = evaluate_checkpoint(entry["file"], data_dir, max_images=entry["test_subset"])
    keys = [k for k in ("top1", "miou", "macs_mean") if k in entry]
    diff = {k: metrics[k] - entry[k] for k in keys}
    ok = all(
        abs(d) <= (CHECK_MACS_RTOL * entry[k] if k == "macs_mean" else CHECK_TOL) for k, d in diff.items()
    )
    machine = machine_description(resolve_device("auto"))
    return {**{k: metrics[k] for k in keys + ["images"]}, "difference": diff, "ok": ok, "machine": machine}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders (summary.json, last.pt)")
    ap.add_argument("--out", type=Path, default=Path("weights/cifar10"), help="folder of the weights")
    ap.add_argument("--check", action="store_true", help="evaluate each exported file like batchshaping eval")
    ap.add_argument("--data-dir", default=None, help="--check: the data set's folder")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    index = args.out / "manifest.json"
    listed = {e["run"]: e for e in json.loads(index.read_text())["weights"]} if index.is_file() else {}
    for run in args.runs:
        entry = export(run, args.out)
        listed[entry["run"]] = entry
        print(f"wrote {entry['file']} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:12]}...)")
        if args.check:
            entry["eval_check"] = c = check(entry, args.data_dir)
            print(f"  batchshaping eval: {'agrees' if c['ok'] else 'DIFFERS'}: differences {c['difference']}")
    body = {"weights": sorted(listed.values(), key=lambda e: e["run"])}
    index.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {index}")
    failed = [e["run"] for e in listed.values() if not e.get("eval_check", {}).get("ok", True)]
    if failed:
        print(f"batchshaping eval does not reproduce the runs' numbers: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
