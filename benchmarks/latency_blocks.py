"""Batch-1 CPU latency of each block of the conditional ResNet-50 (or -18) against its dense folded twin.

The issue's target is stated for "224x224 ResNet-50-sized blocks"; benchmarks/latency.py measures whole
networks, whose ratio also carries the stem, the pooling and the classifier (dense in both variants). Here
each block runs alone on its real input (the activations of the same images through the network), so the
ratio of every block can be set against that block's own MAC ratio r_b:

    r_b      (gate MACs + conditional conv MACs) / dense conv MACs of the block, per image, from the
             library's MacCounter and the block's realised gates (exact accounting, as in latency.py)
    ratio    cond / dense block latency: thread CPU time, 1 thread, TorchScript (compile_conditional's
             default), timed by common.time_variants: per image the median of ``--repeats`` interleaved
             runs after a first one, then the mean over images

The untrained model is set up as in latency.py: BatchNorm statistics from real images, gate biases bisected
so that the network's r is about 0.5 (the blocks then differ in r_b). Inputs are CIFAR-10 test images
upsampled to 224x224. Writes a JSON file (``--out``) and prints a table, per block and summed per stage.

    python -m benchmarks.latency_blocks                       # ResNet-50, 4 images, ~30 s idle
    python -m benchmarks.latency_blocks --model gated_resnet18
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import batchshaping as bs
from batchshaping.gates import ChannelGate
from batchshaping.inference import compile_conditional
from batchshaping.macs import MacCounter
from benchmarks.common import (
    CIFAR_TEST,
    block_inputs,
    calibrate_untrained,
    dense_twin,
    load_images,
    machine,
    time_variants,
)


def block_macs(model: nn.Module, counter: MacCounter, name: str, mask: Tensor) -> tuple[float, float]:
    """(conditional MACs incl. the gate's, dense MACs) of block ``name`` for its (G,) bool mask."""
    layers = {k[len(name) + 1 :]: v for k, v in counter.layers.items() if k.startswith(name + ".")}
    dense = sum(v for k, v in layers.items() if not k.startswith("gate."))
    cond = float(sum(layers.values()))  # the block's convs and its gate, all open
    for conv, (f_in, f_out) in model.get_submodule(name).gated_convs(mask[None].double()).items():
        cond += layers[conv] * (float(f_in * f_out) - 1.0)
    return cond, float(dense)


def measure(model: nn.Module, x: Tensor, repeats: int) -> dict[str, dict]:
    """{block name: per-image r_b, cond and dense ms, dense MACs} of every gated block on the images x."""
    cond_core = compile_conditional(model, script=True).core
    dense_core = compile_conditional(dense_twin(model), script=True).core
    names = [n for n, m in model.named_modules() if isinstance(getattr(m, "gate", None), ChannelGate)]
    counter = MacCounter(model, (3, 224, 224))
    rows = {n: {"r": [], "cond_ms": [], "dense_ms": [], "macs": 0.0} for n in names}
    cond_blocks = list(cond_core.blocks.children())
    dense_blocks = list(dense_core.blocks.children())
    for i in range(len(x)):
        inputs = block_inputs(cond_core, x[i : i + 1])
        for b, name in enumerate(names):
            cond, dense = block_macs(model, counter, name, cond_blocks[b].last_mask[0])
            fns = {"cond": cond_blocks[b], "dense": dense_blocks[b]}
            # One image, repeats + 1 interleaved runs, the first dropped (latency.py's timing).
            lat, _, _ = time_variants(fns, inputs[b], inputs[b], repeats, float("inf"))
            row = rows[name]
            row["r"].append(cond / dense)
            row["cond_ms"].append(lat["cond"]["cpu"])
            row["dense_ms"].append(lat["dense"]["cpu"])
            row["macs"] = dense
        print(f"image {i + 1}/{len(x)} done", flush=True)
    return rows


def summarize(rows: dict[str, dict]) -> tuple[list[dict], list[dict]]:
    """(per-block table, per-stage table: r MAC-weighted, ratio = summed time / summed time)."""
    table = []
    for name, row in rows.items():
        cond_ms, dense_ms = statistics.fmean(row["cond_ms"]), statistics.fmean(row["dense_ms"])
        table.append(
            {
                "block": name,
                "dense_mmacs": row["macs"] / 1e6,
                "r": statistics.fmean(row["r"]),
                "cond_ms": cond_ms,
                "dense_ms": dense_ms,
                "ratio": cond_ms / dense_ms,
            }
        )
    stages = []
    for stage in ("layer1", "layer2", "layer3", "layer4", ""):
        sel = [t for t in table if t["block"].startswith(stage)]
        macs = sum(t["dense_mmacs"] for t in sel)
        stages.append(
            {
                "stage": stage or "all blocks",
                "r": sum(t["r"] * t["dense_mmacs"] for t in sel) / macs,
                "ratio": sum(t["cond_ms"] for t in sel) / sum(t["dense_ms"] for t in sel),
                "dense_ms": sum(t["dense_ms"] for t in sel),
            }
        )
    return table, stages


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", default="gated_resnet50", choices=["gated_resnet18", "gated_resnet34", "gated_resnet50"]
    )
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--target-r", type=float, default=0.5)
    p.add_argument("--data", type=Path, default=CIFAR_TEST, help="cifar10_test.npz")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency_blocks.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = bs.create_model(args.model).eval()
    calibrate_untrained(model, args.data, args.target_r)
    x = load_images(args.data, args.images, 224)
    table, stages = summarize(measure(model, x, args.repeats))
    print(
        f"\n{args.model}, batch 1, 224x224, 1 thread, TorchScript; {len(x)} images x {args.repeats} repeats"
    )
    print(
        f"{'block':10s} {'MMACs':>7s} {'r_b':>6s} {'dense ms':>9s} {'cond ms':>8s} {'ratio':>6s} {'-r_b':>6s}"
    )
    for t in table:
        print(
            f"{t['block']:10s} {t['dense_mmacs']:7.1f} {t['r']:6.3f} {t['dense_ms']:9.2f} "
            f"{t['cond_ms']:8.2f} {t['ratio']:6.3f} {t['ratio'] - t['r']:+6.3f}"
        )
    for s in stages:
        print(f"{s['stage']:10s} r {s['r']:.3f}  ratio {s['ratio']:.3f}  ({s['ratio'] - s['r']:+.3f})")
    meta = {
        "model": args.model,
        "images": len(x),
        "repeats": args.repeats,
        "threads": 1,
        **machine(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(
            ["python -m benchmarks.latency_blocks", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "blocks": table, "stages": stages}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
