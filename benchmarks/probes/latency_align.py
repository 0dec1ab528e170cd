"""ResNet-50 batch-1 latency ratio for several ``channel_align`` values, side by side in one process.

Same setup and timing as ``benchmarks/latency.py`` (untrained gates set for r ~ 0.5, 6 CIFAR-10 test images
upsampled to 224x224, 5 repeats, thread CPU time, 1 thread); every variant is compared with the same
BN-folded dense twin.

    python -m benchmarks.probes.latency_align 1,4,8,16
    python -m benchmarks.probes.latency_align 1,8 --images 1 --repeats 1     # smoke run
"""

from __future__ import annotations

import argparse

import torch

import batchshaping as bs
from batchshaping.inference import compile_conditional
from benchmarks.common import CIFAR_TEST, calibrate_untrained, dense_twin, load_images, time_variants


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("aligns", nargs="?", default="1,4,8,16", help="comma-separated channel_align values")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    aligns = [int(v) for v in args.aligns.split(",")]
    torch.set_num_threads(1)
    model = bs.create_model("gated_resnet50").eval()
    calibrate_untrained(model, CIFAR_TEST)
    x = load_images(CIFAR_TEST, args.images, 224)
    warm = load_images(CIFAR_TEST, 2, 224, seed=2)
    fns = {"dense": compile_conditional(dense_twin(model))}
    for a in aligns:
        fns[f"cond_a{a}"] = compile_conditional(model, channel_align=a)
    lat, _, _ = time_variants(fns, x, warm, args.repeats, 120)
    d = lat["dense"]
    for k, v in lat.items():
        print(
            f"{k:10s} {v['cpu']:8.2f} ms  ratio {v['cpu'] / d['cpu']:.3f}  "
            f"first {v['first']:.1f} ms  ratio {v['first'] / d['first']:.3f}"
        )


if __name__ == "__main__":
    main()
