"""NCHW or channels_last (NHWC)? Single batch-1 convs of ResNet-50's sizes, one thread, both layouts.

Behind ``batchshaping.inference.NHWC_MIN_PIXELS``: 3x3 convs through oneDNN (``mkldnn_convolution``, what
the package calls for big 3x3 convs) and ``F.conv2d``, each on an NCHW and a channels_last input, for full
and gated (narrower) channel counts; and 1x1 convs as the three GEMM forms the package can use.

    python -m benchmarks.probes.micro_conv_layout   # ~1 min; two tables (thread CPU ms, median of 25)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import median_ms


def onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.mkldnn_convolution(x, w, b, [1, 1], [1, 1], [1, 1], 1)


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b, 1, 1)


def gemm_nchw(w: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b[:, None], w, x)  # (C_out, C_in) @ (C_in, HW)


def gemm_nhwc(w: torch.Tensor, x2: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b, x2, w.t())  # (HW, C_in) @ (C_in, C_out)


def gemm_nhwc_to_nchw(w: torch.Tensor, x2: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b[:, None], w, x2.t())  # (C_out, C_in) @ (HW, C_in)^T


def main() -> None:
    torch.set_num_threads(1)
    cl = torch.channels_last
    print("3x3 conv, channels (in = out) x map: oneDNN NCHW, oneDNN NHWC, F.conv2d NCHW, F.conv2d NHWC, ms")
    sizes = [(64, 56), (32, 56), (128, 28), (64, 28), (256, 14), (128, 14), (512, 7), (256, 7)]
    for c, side in sizes:
        x = torch.randn(1, c, side, side)
        w, b = torch.randn(c, c, 3, 3), torch.randn(c)
        xc = x.contiguous(memory_format=cl)
        ms = [median_ms(f, xi, w, b) for f in (onednn, conv2d) for xi in (x, xc)]
        print(f"  {c:4d} x {side:2d}x{side:<2d}  " + "  ".join(f"{v:7.3f}" for v in ms))
    print("1x1 conv as a GEMM, (C_in, C_out, pixels): NCHW, NHWC, NHWC in -> NCHW out, ms")
    gemms = [(2048, 512, 49), (2048, 256, 49), (1024, 256, 196), (256, 64, 3136), (256, 32, 3136)]
    for c_in, c_out, hw in gemms:
        w, b = torch.randn(c_out, c_in), torch.randn(c_out)
        x = torch.randn(c_in, hw)
        x2 = x.t().contiguous()
        ms = [median_ms(gemm_nchw, w, x, b)]
        ms += [median_ms(f, w, x2, b) for f in (gemm_nhwc, gemm_nhwc_to_nchw)]
        print(f"  {c_in:4d} {c_out:4d} {hw:5d}  " + "  ".join(f"{v:7.3f}" for v in ms))


if __name__ == "__main__":
    main()
