"""A/B of two versions of batchshaping/inference.py: batch-1 CPU latency of the same models, side by side.

Speed changes to the conditional inference code are small next to this machine's noise between runs, so
they are measured here in one process: the dense twin and the conditional model compiled by the current
``batchshaping.inference`` ("new") and by another version of that file ("old", e.g. from git), all four
TorchScript, interleaved in a rotating order on the same images (1 thread, thread CPU time, per image the
median over repeats after a first run, then the mean over images; as common.time_variants does).

    git show HEAD~3:batchshaping/inference.py > /tmp/inference_old.py
    python -m benchmarks.latency_ab /tmp/inference_old.py               # gated_resnet50, 8 images x 8
    python -m benchmarks.latency_ab /tmp/inference_old.py --model gated_resnet18 --images 4

Prints the four latencies and both ratios (cond / dense); the untrained gates are calibrated to r ~ 0.5 as
in latency.py.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

import batchshaping as bs
from batchshaping.inference import compile_conditional
from batchshaping.models.cifar_resnet import CifarResNet
from benchmarks.common import CIFAR_TEST, calibrate_untrained, dense_twin, load_images, machine, time_variants


def load_module(path: Path):
    """The other inference.py, imported under its own name (it imports the rest of the package as is)."""
    spec = importlib.util.spec_from_file_location("inference_other", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path, help="the other version of batchshaping/inference.py")
    p.add_argument("--model", default="gated_resnet50")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--data", type=Path, default=CIFAR_TEST, help="cifar10_test.npz")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    old = load_module(args.old)
    model = bs.create_model(args.model).eval()
    calibrate_untrained(model, args.data)
    twin = dense_twin(model)
    size = 32 if isinstance(model, CifarResNet) else 224
    x = load_images(args.data, args.images, size, seed=5)
    fns = {
        "dense_old": old.compile_conditional(twin),
        "cond_old": old.compile_conditional(model),
        "dense_new": compile_conditional(twin),
        "cond_new": compile_conditional(model),
    }
    with torch.inference_mode():
        diff = (fns["cond_old"](x[:2]) - fns["cond_new"](x[:2])).abs().max().item()
    lat, n_img, reps = time_variants(fns, x, load_images(args.data, 2, size, seed=2), args.repeats, 1e9)
    ms = {k: v["cpu"] for k, v in lat.items()}
    print(f"{machine()['cpu']}, torch {torch.__version__}")
    print(f"{args.model} @ {size}x{size}, {n_img} images x {reps} repeats, 1 thread, thread CPU ms;")
    print(f"max |cond_old - cond_new| = {diff:.1e}")
    for k, v in ms.items():
        print(f"  {k:10s} {v:8.2f}")
    d_old, c_old, d_new, c_new = (ms[k] for k in ("dense_old", "cond_old", "dense_new", "cond_new"))
    print(f"ratio old {c_old / d_old:.3f}  new {c_new / d_new:.3f}")
    print(f"new / old: dense {d_new / d_old:.3f}  cond {c_new / c_old:.3f}")


if __name__ == "__main__":
    main()
