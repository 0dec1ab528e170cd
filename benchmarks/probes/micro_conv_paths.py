"""Batch-1 3x3 conv paths at ResNet-50 subset sizes: F.conv2d vs direct oneDNN vs im2col + one GEMM.

1 thread, thread CPU time per call; 12 weight tensors are cycled so weights come from memory, as in a
network. Two rounds per size.

    python -m benchmarks.probes.micro_conv_paths
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

SIZES = [(320, 7), (256, 7), (160, 14), (128, 14), (64, 28), (32, 56)]  # (channels in and out, H = W)


def per_call_ms(f: Callable[[int], Tensor], n: int, reps: int = 4) -> float:
    f(0)
    t0 = time.thread_time()
    for _ in range(reps):
        for i in range(n):
            f(i)
    return (time.thread_time() - t0) / (reps * n) * 1e3


def main() -> None:
    torch.set_num_threads(1)
    n = 12
    for k, hw in SIZES:
        ws = [torch.randn(k, k, 3, 3) for _ in range(n)]
        b, x = torch.randn(k), torch.randn(1, k, hw, hw)

        def conv2d(i: int, ws: list[Tensor] = ws, b: Tensor = b, x: Tensor = x) -> Tensor:
            return F.conv2d(x, ws[i], b, 1, 1)

        def onednn(i: int, ws: list[Tensor] = ws, b: Tensor = b, x: Tensor = x) -> Tensor:
            return torch.ops.aten.mkldnn_convolution(x, ws[i], b, [1, 1], [1, 1], [1, 1], 1)

        def gemm(
            i: int, ws: list[Tensor] = ws, b: Tensor = b, x: Tensor = x, k: int = k, hw: int = hw
        ) -> Tensor:
            cols = F.unfold(x, 3, padding=1)[0]
            return torch.addmm(b[:, None], ws[i].view(k, -1), cols).view(1, k, hw, hw)

        assert (gemm(0) - conv2d(0)).abs().max() < 1e-3
        for _ in range(2):
            print(
                f"k={k} {hw}x{hw}: F.conv2d {per_call_ms(conv2d, n):.3f}  "
                f"mkldnn {per_call_ms(onednn, n):.3f}  unfold+addmm {per_call_ms(gemm, n):.3f} ms"
            )


if __name__ == "__main__":
    main()
