"""Batched CIFAR augmentation on whatever device the batch lives on (no torchvision, no per-image loop).

All images are (N, C, H, W) tensors, uint8 or floating point, contiguous or channels_last. The standard
CIFAR recipe is ``crop_flip`` (parameters from ``draw_crop_flip``) on the uint8 batch, then ``normalize``:
cropping before normalising makes the zero padding black pixels, exactly like torchvision's
``RandomCrop(32, padding=4) -> RandomHorizontalFlip() -> ToTensor() -> Normalize()``.

Cropping is a single flat ``index_select`` from a zero-padded copy, with per-image row/column indices;
the horizontal flip is folded into the column indices, so crop + flip cost one gather. On a GPU it is a
handful of kernels with no host synchronisation (grouping by offset would need ``unique``/``nonzero``, which
synchronise).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor


def _wants_channels_last(x: Tensor, channels_last: bool | None) -> bool:
    if channels_last is not None:
        return channels_last
    # Follow the input, like torch.preserve_format (a plain contiguous tensor stays contiguous).
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def crop_flip(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    flip: Tensor | None = None,
    padding: int = 4,
    channels_last: bool | None = None,
) -> Tensor:
    """Crop every image at its own offset from a zero-padded copy, then mirror the chosen images.

    x: (N, C, H, W), any dtype. top, left: (N,) integer offsets in [0, 2 * padding] into the image padded
    by ``padding`` zeros on every side (``padding``, ``padding`` is the identity crop). flip: (N,) bool,
    True mirrors that image left-right after cropping; None flips nothing.
    Returns (N, C, H, W) with x's dtype and device; channels_last output if ``channels_last`` (None: like x).
    """
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    cl = _wants_channels_last(x, channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    p = int(padding)
    if p < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if p == 0:
        src = x if x.is_contiguous(memory_format=fmt) else x.contiguous(memory_format=fmt)
    else:
        shape = (n, c, h + 2 * p, w + 2 * p)
        src = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
        src[:, :, p : p + h, p : p + w] = x
    # int32 indices gather a bit faster; the flat index of the padded batch must fit.
    itype = torch.int32 if src.numel() < 2**31 else torch.int64
    dev = x.device
    _, _, sh, sw = src.stride()
    nc, rows, cols, cols_rev = _index_consts(n, c, h, w, src.stride(), dev, itype)
    top = top.to(device=dev, dtype=itype)
    left = left.to(device=dev, dtype=itype)
    row = torch.add(rows, top[:, None], alpha=sh)  # (N, H): (top + i) * sh
    if flip is None:
        col = torch.add(cols, left[:, None], alpha=sw)  # (N, W): (left + j) * sw
    else:
        # Mirroring the crop reads its columns right to left: column j comes from left + W - 1 - j.
        col = torch.where(flip.to(dev, torch.bool)[:, None], cols_rev, cols).add_(left[:, None], alpha=sw)
    # Flat offset = image/channel term + row term + column term; summing in NHWC order gives channels_last.
    # The small add goes first and the big one keeps a long contiguous inner run (W*C or H*W).
    if cl:
        idx = (col.view(n, 1, w, 1) + nc.view(n, 1, 1, c)) + row.view(n, h, 1, 1)
    else:
        idx = (row.view(n, 1, h, 1) + col.view(n, 1, 1, w)) + nc
    flat = src.as_strided((src.numel(),), (1,))  # src is dense, so its storage is exactly its elements
    out = flat.index_select(0, idx.view(-1)).view(idx.shape)
    return out.permute(0, 3, 1, 2) if cl else out


@functools.lru_cache(maxsize=32)
def _index_consts(
    n: int, c: int, h: int, w: int, strides: tuple[int, ...], device: torch.device, itype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-shape index pieces, cached so a batch costs a handful of kernels (launch overhead on a GPU):
    (N, C, 1, 1) image+channel offsets, (H,) row offsets, (W,) column offsets and the reversed ones."""
    sn, sc, sh, sw = strides
    ar = functools.partial(torch.arange, device=device, dtype=itype)
    nc = (ar(n) * sn).view(n, 1, 1, 1) + (ar(c) * sc).view(1, c, 1, 1)
    cols = ar(w) * sw
    return nc, ar(h) * sh, cols, cols.flip(0)


def draw_crop_flip(
    n: int,
    padding: int = 4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Random parameters for :func:`crop_flip`: top, left (N,) int32 uniform in [0, 2 * padding] and
    flip (N,) bool with p = 0.5, drawn on the generator's device and returned on ``device``.

    Drawing on a CPU generator makes the augmentation identical on every device for the same seed.
    """
    gdev = generator.device if generator is not None else (device or "cpu")
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev, dtype=torch.int32)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev, dtype=torch.int32)
    flip = torch.randint(0, 2, (n,), generator=generator, device=gdev).bool()
    if device is not None:
        top, left, flip = (t.to(device, non_blocking=True) for t in (top, left, flip))
    return top, left, flip


def normalize_params(
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    input_dtype: torch.dtype,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """(scale, shift), each (1, C, 1, 1), such that ``x * scale + shift == (x / 255 - mean) / std`` for
    uint8 x (floating x is taken to be in [0, 1] already)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float64).reshape(1, -1, 1, 1)
    unit = 255.0 if not input_dtype.is_floating_point else 1.0
    scale = 1.0 / (std_t * unit)
    shift = -mean_t / std_t
    return scale.to(device=device, dtype=dtype), shift.to(device=device, dtype=dtype)


def normalize(
    x: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    dtype: torch.dtype = torch.float32,
    channels_last: bool | None = None,
    params: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """(x / 255 - mean) / std as ``dtype``. x: (N, C, H, W) uint8 (or floating in [0, 1]).

    mean, std: C values each. Returns (N, C, H, W) ``dtype`` on x's device, channels_last if
    ``channels_last`` (None: like x). The layout change is cheapest when x already has the output layout.
    ``params`` (from :func:`normalize_params`) skips rebuilding the constants, e.g. once per loader.
    """
    cl = _wants_channels_last(x, channels_last)
    scale, shift = params if params is not None else normalize_params(mean, std, x.dtype, dtype, x.device)
    return _normalize(x, *_storage_order_affine(scale, shift, x.shape[1:], cl), dtype, cl)


def _storage_order_affine(
    scale: Tensor, shift: Tensor, chw: Sequence[int], cl: bool
) -> tuple[Tensor, Tensor]:
    """(1, C, 1, 1) scale/shift laid out like one image's storage, (C * H * W,), for :func:`_normalize`."""
    c, h, w = chw
    scale, shift = scale.reshape(-1).expand(c), shift.reshape(-1).expand(c)
    if cl:
        return scale.repeat(h * w), shift.repeat(h * w)  # HWC: the channel pattern repeats per pixel
    return scale.repeat_interleave(h * w), shift.repeat_interleave(h * w)  # CHW: one run per channel


def _normalize(x: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype, cl: bool) -> Tensor:
    """x * scale + shift into a new ``dtype`` tensor; scale/shift from :func:`_storage_order_affine`."""
    fmt = torch.channels_last if cl else torch.contiguous_format
    out = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=fmt)
    out.copy_(x)
    # One fused pass over an (N, C*H*W) view in storage order: a long contiguous inner dimension. The
    # natural (1, C, 1, 1) broadcast is 2-15x slower on the CPU (inner loop of C = 3 for channels_last).
    n, c, h, w = x.shape
    flat = (out.permute(0, 2, 3, 1) if cl else out).reshape(n, c * h * w)  # a view in both layouts
    torch.addcmul(shift, flat, scale, out=flat)
    return out
