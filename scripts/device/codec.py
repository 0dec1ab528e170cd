"""Lossless image transform that makes CIFAR-10 compress better before xz (stage.py encodes, assemble.py
decodes; imported as a sibling module like files.py).

Each pixel is predicted from its left (W), upper (N) and upper-left (NW) neighbours in the same channel with
the median edge detector of LOCO-I / JPEG-LS: min(W, N) if NW >= max(W, N), max(W, N) if NW <= min(W, N),
else W + N - NW (outside the image the neighbours are 0). The residuals x - prediction are kept mod 256,
and the green residual is subtracted from the red and blue ones (the channels' errors are correlated).
On CIFAR-10 xz then gives 0.57 of the raw size, against 0.67 with xz's own delta filter over the RGB bytes
(measured on 3,000 test images), so the 176 MiB of arrays travel as ~100 MiB instead of ~117.
"""

from __future__ import annotations

import numpy as np


def _med(w: np.ndarray, n: np.ndarray, nw: np.ndarray) -> np.ndarray:
    hi, lo = np.maximum(w, n), np.minimum(w, n)
    return np.where(nw >= hi, lo, np.where(nw <= lo, hi, w + n - nw))


def encode(x: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) -> uint8 residuals of the same shape."""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"encode needs uint8 (N, H, W, 3) images, got {x.dtype} {x.shape}")
    v = x.astype(np.int16)
    w, n, nw = (np.zeros_like(v) for _ in range(3))
    w[:, :, 1:] = v[:, :, :-1]
    n[:, 1:] = v[:, :-1]
    nw[:, 1:, 1:] = v[:, :-1, :-1]
    r = v - _med(w, n, nw)
    r[..., 0] -= r[..., 1]
    r[..., 2] -= r[..., 1]
    return (r % 256).astype(np.uint8)


def decode(r: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode`: one pixel position at a time (each depends on the ones decoded
    before it), for all images and channels at once: 1,024 vectorised steps for 32 x 32 images."""
    res = r.astype(np.int16)
    res[..., 0] += res[..., 1]
    res[..., 2] += res[..., 1]
    _, h, wd, _ = r.shape
    v = np.zeros(r.shape, dtype=np.int16)
    zero = np.zeros((r.shape[0], 3), dtype=np.int16)
    for i in range(h):
        for j in range(wd):
            w = v[:, i, j - 1] if j else zero
            n = v[:, i - 1, j] if i else zero
            nw = v[:, i - 1, j - 1] if i and j else zero
            v[:, i, j] = (_med(w, n, nw) + res[:, i, j]) % 256
    return v.astype(np.uint8)
