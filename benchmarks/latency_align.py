"""ResNet-50 batch-1 latency ratio for several ``channel_align`` values, side by side in one process.

Same setup and timing as ``benchmarks/latency.py`` (untrained gates set for r ~ 0.5, 6 CIFAR-10 test images
upsampled to 224x224, 5 repeats, thread CPU time, 1 thread); every variant is compared with the same
BN-folded dense twin.

    python benchmarks/latency_align.py 1,4,8,16
"""

from __future__ import annotations

import copy
import sys

import torch

import batchshaping as bs
from batchshaping.gates import force_gates
from batchshaping.inference import compile_conditional

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
import latency as L  # noqa: E402


def main() -> None:
    aligns = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "1,4,8,16").split(",")]
    torch.set_num_threads(1)
    model = bs.create_model("gated_resnet50").eval()
    L.calibrate_untrained(model, L.CIFAR_TEST)
    x = L.load_images(L.CIFAR_TEST, 6, 224)
    warm = L.load_images(L.CIFAR_TEST, 2, 224, seed=2)
    twin = copy.deepcopy(model)
    force_gates(twin, 1.0)
    fns = {"dense": compile_conditional(twin)}
    for a in aligns:
        fns[f"cond_a{a}"] = compile_conditional(model, channel_align=a)
    with torch.inference_mode():
        lat, _, _ = L.time_variants(fns, x, warm, 5, 120)
    d = lat["dense"]
    for k, v in lat.items():
        print(
            f"{k:10s} {v['cpu']:8.2f} ms  ratio {v['cpu'] / d['cpu']:.3f}  "
            f"first {v['first']:.1f} ms  ratio {v['first'] / d['first']:.3f}"
        )


if __name__ == "__main__":
    main()
