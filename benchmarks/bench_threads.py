"""Two training runs on a 2-core CPU: one thread each side by side, or one after the other with two threads?

Times the real training step (TrainStep of the paper recipe's losses, bf16 autocast where the CPU has fast
bf16, else fp32; batch 256 of random 32x32 images, eager) of resnet20 and gated_resnet32 (the pair of the
paper's comparison) in three windows of --seconds each:

1. resnet20 alone with 2 threads, 2. gated_resnet32 alone with 2 threads, 3. both at once, each in its own
process with 1 thread.

Each process counts the steps it finishes in its window (after --warmup steps). Side by side pays if the two
processes together get through more of both jobs than time-sharing the 2 threads would:
``r20_par / r20_alone + gated_par / gated_alone > 1`` (each term: the fraction of a 2-thread process's work
done by the 1-thread one in the same time). Writes benchmarks/results/threads.json.

    python -m benchmarks.bench_threads --seconds 40
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet20", "gated_resnet32")


def steps_in_window(model_name: str, threads: int, seconds: float, warmup: int, ready: object) -> float:
    """Training steps per second of ``model_name`` with ``threads`` torch threads over ``seconds``, timed
    from when every process of the window has warmed up (``ready``: a multiprocessing Barrier)."""
    torch.set_num_threads(threads)
    from batchshaping.config import load_config
    from batchshaping.macs import MacCounter
    from batchshaping.models import create_model
    from batchshaping.runtime import resolve_precision
    from batchshaping.step import TrainStep, schedule, sgd
    from batchshaping.tasks import ClassificationTask

    recipe = "cifar10_gated_resnet32" if model_name.startswith("gated") else "cifar10_resnet20"
    cfg = load_config(recipe)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).to(memory_format=torch.channels_last)
    counter = MacCounter(model, (3, 32, 32))
    amp = resolve_precision("auto", torch.device("cpu"))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    step = TrainStep(model, model, sgd(model, cfg), scaler, ClassificationTask(), counter, cfg, amp)
    x = torch.randn(256, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,))
    weights = schedule(cfg, 0.1)  # the batch-shaping phase: every loss of the gated model is on
    for _ in range(warmup):
        step(x, y, *weights)
    ready.wait()  # type: ignore[attr-defined]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(x, y, *weights)
        n += 1
    return n / (time.perf_counter() - t0)


def _child(model_name: str, threads: int, seconds: float, warmup: int, ready: object, out: mp.Queue) -> None:
    out.put((model_name, steps_in_window(model_name, threads, seconds, warmup, ready)))


def run_window(jobs: list[tuple[str, int]], seconds: float, warmup: int) -> dict[str, float]:
    """Each (model, threads) job in its own process, all timed over the same window; steps/s per model."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    ready = ctx.Barrier(len(jobs))
    procs = [ctx.Process(target=_child, args=(m, t, seconds, warmup, ready, out)) for m, t in jobs]
    for p in procs:
        p.start()
    results = dict(out.get() for _ in procs)
    for p in procs:
        p.join()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each timed window")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per process first")
    ap.add_argument("--out", type=Path, default=RESULTS / "threads.json")
    args = ap.parse_args()
    from benchmarks.common import machine

    alone = {m: run_window([(m, 2)], args.seconds, args.warmup)[m] for m in MODELS}
    side_by_side = run_window([(m, 1) for m in MODELS], args.seconds, args.warmup)
    share = {m: side_by_side[m] / alone[m] for m in MODELS}
    gain = sum(share.values())
    for m in MODELS:
        print(
            f"{m}: {alone[m]:.3f} steps/s alone with 2 threads, {side_by_side[m]:.3f} with 1 thread beside "
            f"the other ({share[m]:.2f} of alone)"
        )
    verdict = "side by side" if gain > 1 else "one after the other"
    print(f"sum of the shares {gain:.2f}: {verdict} gets through more (> 1: side by side)")
    record = {
        "benchmark": "two training runs on 2 cores: 1 thread each side by side vs 2 threads one at a time",
        "command": f"python -m benchmarks.bench_threads --seconds {args.seconds:g} --warmup {args.warmup}",
        "steps_per_s_alone_2_threads": alone,
        "steps_per_s_side_by_side_1_thread": side_by_side,
        "share_of_alone": share,
        "sum_of_shares": gain,
        "machine": machine(),
        "load_average_after": os.getloadavg(),
        "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
