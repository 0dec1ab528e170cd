"""Training-speed benchmarks (not tests). Writes benchmarks/results/train.json (or --out).

1. Gate overhead: one training step (forward, CE + batch-shaping + L0, backward, SGD) of gated_resnet32
   against resnet32 with the same weights, interleaved, median of --repeats steps, per precision.
2. Data pipeline: resnet20 training through the real pipeline (TensorLoader with on-device crop + flip
   and normalisation, the loop of ``batchshaping.train``) against a bare loop over pre-made tensors.
3. Step path on CPU: the eager TrainStep against the same step compiled by torch.compile (FastTrainStep,
   what ``--set step=compile`` runs) for gated_resnet32 with the paper recipe's losses, same weights,
   interleaved, median of --repeats steps after the compilation (timed apart).

    python -m benchmarks.bench_train --threads 2 --repeats 10 [--parts gate,pipeline,steps] [--out FILE]

Each part measured replaces its entry in train.json; the others are kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import batchshaping as bs
from batchshaping.config import TrainConfig
from batchshaping.data import CIFAR10_MEAN, CIFAR10_STD, TensorLoader
from batchshaping.macs import MacCounter
from batchshaping.step import TrainStep, sgd
from batchshaping.tasks import ClassificationTask
from batchshaping.train import train_epoch
from benchmarks.common import machine

RESULTS = Path(__file__).resolve().parent / "results"


def _step_fn(model, x, y, dtype, gated):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    shaping = bs.BatchShapingLoss()

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if gated:
            outs = bs.gate_outputs(model)
            loss = (
                loss + 0.75 * shaping(torch.cat([o.probs for o in outs], 1)) + 1e-3 * bs.l0_loss(outs, "sum")
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def gate_overhead(batch: int, repeats: int, precisions: list[str]) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    dense = bs.create_model("resnet32").to(memory_format=torch.channels_last)
    gated = bs.create_model("gated_resnet32").to(memory_format=torch.channels_last)
    gated.load_state_dict(dense.state_dict(), strict=False)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for prec in precisions:
        dtype = {"fp32": None, "bf16": torch.bfloat16}[prec]
        fd, fg = _step_fn(dense, x, y, dtype, False), _step_fn(gated, x, y, dtype, True)
        for f in (fd, fg, fd, fg):  # warm-up
            f()
        td, tg = [], []
        for _ in range(repeats):  # interleaved: both see the same machine load
            for f, t in ((fd, td), (fg, tg)):
                t0 = time.perf_counter()
                f()
                t.append(time.perf_counter() - t0)
        d, g = statistics.median(td), statistics.median(tg)
        rows.append({"precision": prec, "batch": batch, "dense_s": d, "gated_s": g, "ratio": g / d})
        print(f"{prec} batch {batch}: resnet32 {d * 1e3:.1f} ms, gated {g * 1e3:.1f} ms, x{g / d:.3f}")
    return rows


def pipeline(batch: int, steps: int, repeats: int) -> dict:
    """Images/s of resnet20 training via TensorLoader + the package loop vs pre-made tensors."""
    n = batch * steps
    torch.manual_seed(0)
    x_u8 = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    cfg = TrainConfig(model="resnet20", epochs=1, progress=False)
    cfg.loss.bs_weight = 0.0
    model = bs.create_model("resnet20").to(memory_format=torch.channels_last)
    opt = sgd(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loader = TensorLoader(x_u8, y, batch, True, "cpu", CIFAR10_MEAN, CIFAR10_STD, channels_last=True)
    counter = MacCounter(model, (3, 32, 32))
    premade = [
        (torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last), y[i * batch : (i + 1) * batch])
        for i in range(steps)
    ]

    step = TrainStep(model, model, opt, scaler, ClassificationTask(), counter, cfg, None)

    def run_pipeline() -> None:
        train_epoch(step, loader, 0, cfg)

    def run_bare() -> None:
        for xb, yb in premade:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run_bare()
    run_pipeline()
    tp, tb = [], []
    for _ in range(repeats):
        for f, t in ((run_pipeline, tp), (run_bare, tb)):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    p, b = n / statistics.median(tp), n / statistics.median(tb)
    print(f"pipeline resnet20 batch {batch}: pipeline {p:.0f} img/s, bare {b:.0f} img/s, ratio {p / b:.3f}")
    return {"batch": batch, "steps": steps, "pipeline_img_s": p, "bare_img_s": b, "ratio": p / b}


def step_paths(batch: int, repeats: int, precisions: list[str]) -> list[dict]:
    """Seconds per training step of gated_resnet32, eager vs compiled, per precision."""
    from batchshaping.config import load_config
    from batchshaping.fast_step import FastTrainStep

    rows = []
    cfg = load_config("cifar10_gated_resnet32")
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for prec in precisions:
        dtype = {"fp32": None, "bf16": torch.bfloat16}[prec]
        steps = []
        for compiled in (False, True):
            torch.manual_seed(0)
            model = bs.create_model("gated_resnet32").to(memory_format=torch.channels_last)
            counter = MacCounter(model, (3, 32, 32))
            task = ClassificationTask()
            eager = TrainStep(model, model, sgd(model, cfg), scaler, task, counter, cfg, dtype)
            steps.append(FastTrainStep(eager, False, compile_mode="default") if compiled else eager)
        t0 = time.perf_counter()
        steps[1](x, y, 0.1, 0.75, 0.0015)  # compiles forward + losses, backward and the update
        compile_s = time.perf_counter() - t0
        for f in (steps[0], steps[1], steps[0]):
            f(x, y, 0.1, 0.75, 0.0015)
        times: list[list[float]] = [[], []]
        for _ in range(repeats):  # interleaved: both see the same machine load
            for f, t in zip(steps, times, strict=True):
                t0 = time.perf_counter()
                f(x, y, 0.1, 0.75, 0.0015)
                t.append(time.perf_counter() - t0)
        e, c = statistics.median(times[0]), statistics.median(times[1])
        row = {"precision": prec, "batch": batch, "eager_s": e, "compiled_s": c, "speedup": e / c}
        rows.append(row | {"compile_s": compile_s, "path": steps[1].path})
        print(
            f"{prec} batch {batch}: eager {e * 1e3:.0f} ms, compiled {c * 1e3:.0f} ms per step, "
            f"x{e / c:.2f} (compile {compile_s:.0f} s, path {steps[1].path})"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--pipeline-steps", type=int, default=4)
    ap.add_argument("--parts", default="gate,pipeline,steps", help="which measurements (comma-separated)")
    ap.add_argument("--out", type=Path, default=RESULTS / "train.json", help="results file, updated in place")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts, precisions = args.parts.split(","), args.precisions.split(",")
    path = args.out
    out = json.loads(path.read_text()) if path.is_file() else {}
    where = {"machine": machine(), "command": " ".join(["python -m benchmarks.bench_train", *sys.argv[1:]])}
    if "gate" in parts or "pipeline" in parts:
        for old_key in ("torch", "cpu_capability"):  # now inside "machine"
            out.pop(old_key, None)
    if "gate" in parts:
        out.update(where, gate_overhead=gate_overhead(args.batch, args.repeats, precisions))
    if "pipeline" in parts:
        out.update(where, pipeline=pipeline(args.batch, args.pipeline_steps, max(3, args.repeats // 3)))
    if "steps" in parts:  # its own machine record: it may run on another machine than the parts above
        out["step_paths"] = {**where, "rows": step_paths(args.batch, args.repeats, precisions)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
