"""How much slower the full-width passes of a ResNet-50 layer1 block get when their input is not in cache.

Each op runs on a (256, 3136) tensor (a layer1 block's input at 224x224, 3.2 MB), 1 thread, median thread-CPU
time of 30 calls: "hot" repeats the op on data it just touched; "cold" first writes a 64 MB buffer, so the
input comes from memory as it does in the network, where every block's input was written one block earlier
and the intermediate tensors have moved through the caches since.

    python -m benchmarks.probes.micro_cold_cache
"""

from __future__ import annotations

import torch

from benchmarks.common import median_ms


def main() -> None:
    torch.set_num_threads(1)
    h, w, b = torch.randn(256, 3136), torch.randn(32, 256), torch.randn(32)
    flush = torch.empty(16 * 1024 * 1024)  # 64 MB, twice the L3
    ops = {
        "conv1 as addmm (32 of 64 rows)": lambda: torch.addmm(b[:, None], w, h),
        "gate pooling (sum over pixels)": lambda: h.sum(1),
        "copy (clone)": lambda: h.clone(),
        "in-place add": lambda: h.add_(1.0),
    }
    print(f"{'op on a (256, 3136) input':34s} {'hot ms':>7s} {'cold ms':>8s}")
    for name, fn in ops.items():
        hot, cold = median_ms(fn, n=30, warmup=0), median_ms(fn, n=30, warmup=0, flush=flush)
        print(f"{name:34s} {hot:7.3f} {cold:8.3f}")


if __name__ == "__main__":
    main()
