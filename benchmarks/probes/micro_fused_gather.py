"""Would a compiled kernel that reads the gated weight subset in place close the ResNet-50 gap? A probe.

benchmarks/README.md traces the gap between the conditional ResNet-50's latency ratio and its MAC ratio to
copies that PyTorch ops cannot avoid: the open rows / columns of each weight are gathered into a new
tensor (`index_select`), which oneDNN then reorders once more, before the GEMM or conv reads them. This
probe compiles a small C kernel (AVX2 + FMA, one thread, not part of the package) that computes

    out[k, p] = bias[rows[k]] + sum_j sum_t W[rows[k], cols[j], t] * X[j * T + t, p]

straight from the full folded weight W (C_out, C_in, T) and the im2col matrix X of the open input channels,
and times it on layer4.1 of the untrained ResNet-50 (r ~ 0.5, as in latency.py), one image, against what
the package runs now and against the dense convs, with the caches flushed before every call (in the
network, the other blocks' weights evict this block's). It needs a C compiler (``cc``) with AVX2 support.

    python -m benchmarks.probes.micro_fused_gather          # ~1 min; prints a table
    python -m benchmarks.probes.micro_fused_gather 9        # another block: 9 = layer3.1, 4 = layer2.1
"""

from __future__ import annotations

import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import batchshaping as bs
from batchshaping.inference import compile_conditional, open_idx
from benchmarks.common import CIFAR_TEST, block_inputs, calibrate_untrained, load_images

TILE = 56  # pixels per register tile: 7 AVX2 vectors

C_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
/* out (kout, Pp) = bias[rows] + W[rows][:, cols, :] (kout, kin*T) @ X (kin*T, Pp); Pp % 56 == 0.
   Two output rows x 56 pixels per register tile (14 accumulators). */
void gemm_gather(const float* W, const int64_t* rows, const int64_t* cols, int kout, int kin, int cin,
                 int T, const float* X, int Pp, const float* bias, float* out) {
    for (int p0 = 0; p0 < Pp; p0 += 56) {
        for (int k = 0; k < kout; k += 2) {
            int two = k + 1 < kout;
            const float* w0 = W + rows[k] * (int64_t)cin * T;
            const float* w1 = W + rows[two ? k + 1 : k] * (int64_t)cin * T;
            __m256 a0[7], a1[7];
            for (int v = 0; v < 7; v++) { a0[v] = _mm256_setzero_ps(); a1[v] = _mm256_setzero_ps(); }
            for (int j = 0; j < kin; j++) {
                const float* u0 = w0 + cols[j] * T;
                const float* u1 = w1 + cols[j] * T;
                const float* x = X + (int64_t)j * T * Pp + p0;
                for (int t = 0; t < T; t++, x += Pp) {
                    __m256 b0 = _mm256_broadcast_ss(u0 + t), b1 = _mm256_broadcast_ss(u1 + t);
                    for (int v = 0; v < 7; v++) {
                        __m256 xv = _mm256_loadu_ps(x + 8 * v);
                        a0[v] = _mm256_fmadd_ps(b0, xv, a0[v]);
                        a1[v] = _mm256_fmadd_ps(b1, xv, a1[v]);
                    }
                }
            }
            __m256 c0 = _mm256_set1_ps(bias[rows[k]]);
            __m256 c1 = _mm256_set1_ps(bias[rows[two ? k + 1 : k]]);
            for (int v = 0; v < 7; v++) {
                _mm256_storeu_ps(out + (int64_t)k * Pp + p0 + 8 * v, _mm256_add_ps(a0[v], c0));
                if (two) _mm256_storeu_ps(out + (int64_t)(k + 1) * Pp + p0 + 8 * v, _mm256_add_ps(a1[v], c1));
            }
        }
    }
}
"""


def build(tmp: Path) -> ctypes.CDLL:
    src, lib = tmp / "gemm_gather.c", tmp / "gemm_gather.so"
    src.write_text(C_SOURCE)
    subprocess.run(["cc", "-O3", "-mavx2", "-mfma", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


def fused(lib, w: torch.Tensor, bias: torch.Tensor, rows, cols, x_cols: torch.Tensor) -> torch.Tensor:
    """w (C_out, C_in, T) contiguous, x_cols (kin * T, Pp) contiguous -> (kout, Pp)."""
    c_out, c_in, t = w.shape
    rows = torch.arange(c_out) if rows is None else rows
    cols = torch.arange(c_in) if cols is None else cols
    out = torch.empty(rows.numel(), x_cols.shape[1])
    p = ctypes.c_void_p
    lib.gemm_gather(
        p(w.data_ptr()), p(rows.data_ptr()), p(cols.data_ptr()), rows.numel(), cols.numel(), c_in, t,
        p(x_cols.data_ptr()), x_cols.shape[1], p(bias.data_ptr()), p(out.data_ptr()),
    )  # fmt: skip
    return out


def padded(x: torch.Tensor) -> torch.Tensor:
    """(R, P) -> (R, Pp) with Pp the next multiple of TILE, zero columns appended."""
    pp = -(-x.shape[1] // TILE) * TILE
    return F.pad(x, [0, pp - x.shape[1]]).contiguous()


def main() -> None:
    torch.set_num_threads(1)
    model = bs.create_model("gated_resnet50").eval()
    calibrate_untrained(model, CIFAR_TEST)
    core = compile_conditional(model, script=False).core
    x = load_images(CIFAR_TEST, 1, 224)
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 14  # 14 = layer4.1: 2048 x 7 x 7 input, width 512
    h = block_inputs(core, x)[index].contiguous()
    blk = core.blocks[index]
    with torch.inference_mode():
        m = blk.gate(h)[0]
        r1, c1 = open_idx(m[: blk.width], blk.align, blk.pad)
        r2, c2 = open_idx(m[blk.width :], blk.align, blk.pad)
        hw = h.shape[2] * h.shape[3]
        x1 = h.reshape(h.shape[1], hw)
        y1 = blk.conv1.run(h, out_idx=r1).relu_()  # (1, k1, 7, 7), compact open channels
        w1, w2 = blk.conv1.weight_ext.flatten(1)[:, :, None], blk.conv2.weight_ext.flatten(2)
        dense_in = torch.randn(1, blk.width, h.shape[2], h.shape[3]).relu_()

        def cols_dense() -> torch.Tensor:
            return padded(F.unfold(dense_in, 3, padding=1)[0])

        with tempfile.TemporaryDirectory() as tmp:
            lib = build(Path(tmp))
            flush = torch.empty(64 * 2**20 // 4)
            cases = {
                "conv1 1x1, package (row gather + addmm)": lambda: blk.conv1.run(h, out_idx=r1),
                "conv1 1x1, fused kernel": lambda: fused(lib, w1, blk.conv1.bias_ext, r1, None, padded(x1)),
                "conv1 1x1, dense addmm": lambda: blk.conv1.run(h),
                "conv1 1x1, dense fused kernel": lambda: fused(
                    lib, w1[: blk.width], blk.conv1.bias, None, None, padded(x1)
                ),
                "conv2 3x3, package (flat gather + oneDNN)": lambda: blk.conv2.run(y1, out_idx=r2, in_idx=c1),
                "conv2 3x3, fused kernel (unfold + kernel)": lambda: fused(
                    lib, w2, blk.conv2.bias_ext, r2, c1, padded(F.unfold(y1, 3, padding=1)[0])
                ),
                "conv2 3x3, dense oneDNN": lambda: blk.conv2.run(dense_in),
                "conv2 3x3, dense fused kernel": lambda: fused(
                    lib,
                    w2[: blk.width],
                    blk.conv2.bias,
                    None,
                    None,
                    padded(F.unfold(dense_in, 3, padding=1)[0]),
                ),
            }
            # Same numbers first: the kernel against the package's result.
            ref1 = blk.conv1.run(h, out_idx=r1).reshape(r1.numel(), hw)
            ref2 = blk.conv2.run(y1, out_idx=r2, in_idx=c1).reshape(r2.numel(), hw)
            err1 = (cases["conv1 1x1, fused kernel"]()[:, :hw] - ref1).abs().max().item()
            err2 = (cases["conv2 3x3, fused kernel (unfold + kernel)"]()[:, :hw] - ref2).abs().max().item()
            times = {k: [] for k in cases}
            for _ in range(3):
                for f in cases.values():
                    f()
            for _ in range(15):
                for k, f in cases.items():
                    flush.add_(1.0)
                    t0 = time.thread_time()
                    f()
                    times[k].append(time.thread_time() - t0)
    print(f"block {index}, one image: open conv1 rows {r1.numel()}, conv2 rows {r2.numel()} of {blk.width}")
    print(f"max |fused - package|: conv1 {err1:.1e}, conv2 {err2:.1e}")
    print("thread CPU ms, median of 15, caches flushed before each call:")
    for k, v in times.items():
        print(f"  {k:44s} {1e3 * statistics.median(v):7.3f}")


if __name__ == "__main__":
    main()
