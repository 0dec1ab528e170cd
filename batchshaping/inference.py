"""Conditional inference: turn a trained gated ResNet into an eval-only module that really skips channels.

:func:`compile_conditional` folds every BatchNorm into the convolution before it and, per image, first
evaluates a block's gate (the deterministic eval gates 1[logits > 0]), then runs the convolutions on the
open channels only:

* BasicBlock: conv1 computes only its open output channels (rows of the folded weight) and conv2 reads
  only those (columns of its weight). With every gate closed conv2 sees zeros, so the block is exactly
  ``relu(bias2 + shortcut)``, bias2 being the folded bn2 shift.
* Bottleneck: conv1 computes its open outputs, conv2 reads those and computes its own open outputs, conv3
  reads conv2's open channels. With conv2 fully closed the block is ``relu(bias3 + shortcut)``; with only
  conv1 fully closed, conv2's output is the spatially constant ``relu(bias2)`` on its open channels and
  conv3 (1x1) turns it into a per-channel constant.

Batches of more than one image, ``batch_mode``:

* ``"union"``: the whole batch runs on the union of its open channels; multiplying by each image's mask
  zeroes what that image does not use, which keeps the result exact. A batch of one runs its exact subsets.
* ``"masked"``: dense folded convolutions times the mask (the original computation minus BatchNorm).
* ``"auto"``: ``"union"`` for a model on the CPU, ``"masked"`` on any other device.

The output equals the original model's eval output up to float rounding from the folding (~1e-6 in fp32),
with the same gates except for logits within rounding distance of 0.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchshaping.gates import ChannelGate, unwrap
from batchshaping.models.blocks import BasicBlock, Bottleneck
from batchshaping.models.cifar_resnet import CifarResNet, PadShortcut
from batchshaping.models.resnet import ResNet

# Batches of images with different masks: "union" runs the channels open in any image of the batch (the
# fastest CPU mode), "masked" runs every channel and zeroes the closed ones (the fastest on a GPU, where index
# copies and small kernels cost more than skipped MACs save); see benchmarks/README.md.
BatchMode = Literal["auto", "union", "masked"]
BATCH_MODES: tuple[str, ...] = ("auto", "union", "masked")

#: Default channel_align of ImageNet ResNets (oneDNN convolutions; see open_idx). CIFAR ResNets use 1: their
#: small convs run on the im2col + GEMM path, where padding costs MACs and there is no kernel cache to keep.
DEFAULT_IMAGENET_ALIGN = 8

#: ImageNet ResNets run a block channels_last (NHWC) when its input has at least this many pixels (layer1,
#: layer2 and the first block of layer3 at 224x224), NCHW below: oneDNN's NHWC 3x3 convs are faster on the
#: big maps and slower on the small, wide ones (benchmarks/README.md, "Decisions and why"); 1x1 convs are
#: GEMMs that read either layout.
NHWC_MIN_PIXELS = 28 * 28
NEVER = 2**62  # a pixel count no input reaches: NCHW throughout (CIFAR ResNets)


def resolve_batch_mode(batch_mode: str, device: torch.device) -> str:
    """The mode a model on ``device`` runs for ``batch_mode``: "auto" is "union" on CPU, "masked" elsewhere
    (on a GPU, index copies, host syncs and small kernels cost more than the skipped MACs save)."""
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {batch_mode!r}")
    if batch_mode != "auto":
        return batch_mode
    return "union" if device.type == "cpu" else "masked"


def _add_relu_(y: Tensor, other: Tensor) -> Tensor:
    """y = relu(y + other) in place: one pass with the fused CPU kernel (fp32), add_ + relu_ elsewhere."""
    if y.device.type == "cpu" and y.dtype == torch.float32:
        return torch.ops.aten._add_relu_(y, other)
    return y.add_(other).relu_()


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, zero_rows: int = 0) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the conv before it.

    conv weight (C_out, C_in, kh, kw) -> (weight * s, bias) with s = gamma / sqrt(var + eps) (C_out,) and
    bias = beta - mean * s (+ conv.bias * s). Returns new contiguous tensors (C_out + zero_rows, C_in, kh, kw)
    and (C_out + zero_rows,), the ``zero_rows`` extra output channels being all zeros.
    """
    if conv.groups != 1:
        raise ValueError(f"grouped convolutions are not supported (groups={conv.groups})")
    w = conv.weight.detach()
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    c_out = w.shape[0]
    weight = w.new_zeros(c_out + zero_rows, *w.shape[1:])
    bias = w.new_zeros(c_out + zero_rows)
    torch.mul(w, s[:, None, None, None], out=weight[:c_out])
    torch.sub(beta, mean * s, out=bias[:c_out])
    if conv.bias is not None:
        bias[:c_out] += conv.bias.detach() * s
    return weight, bias


class FoldedConv(nn.Module):
    """Conv with its BatchNorm folded in: x (N, C_in, H, W) -> (N, C_out, H', W'), no activation.

    ``run`` can compute only some output channels (rows of the weight) from only some input channels
    (columns), given as index tensors. With ``zero_row`` the weight and bias get one extra all-zero output
    channel at index C_out: indexing it yields an output channel that is exactly 0 (after ReLU too), which
    pads channel subsets to aligned sizes (see :func:`open_idx`). With ``columns_t`` (a 1x1 conv that reads
    a channel subset) a transposed copy of the weight, (C_in, C_out), turns the column gather into a gather
    of contiguous rows.
    """

    def __init__(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d, zero_row: bool = False, columns_t: bool = False
    ) -> None:
        super().__init__()
        w, b = fold_bn(conv, bn, zero_rows=int(zero_row))
        self.register_buffer("weight_ext", w)
        self.register_buffer("bias_ext", b)
        # The first C_out rows are a contiguous view: the dense path needs no copy.
        c_out = conv.out_channels
        self.weight, self.bias = w[:c_out], b[:c_out]
        self.stride: list[int] = list(conv.stride)
        self.padding: list[int] = list(conv.padding)
        self.dilation: list[int] = list(conv.dilation)
        self.pointwise: bool = conv.kernel_size == (1, 1) and self.stride == [1, 1] and self.padding == [0, 0]
        self.columns_t: bool = columns_t and self.pointwise
        self.register_buffer(
            "weight_t", self.weight.flatten(1).t().contiguous() if self.columns_t else w.new_zeros(0, 0)
        )
        # Big 3x3 convs (ResNet-50 layers 3 and 4): one flat gather of the needed kernels beats gathering
        # rows then columns, the copies being a large share of these convs' time.
        self.flat_gather: bool = conv.kernel_size != (1, 1) and conv.in_channels * conv.out_channels >= 2**15
        # For the same convs call oneDNN directly: F.conv2d sends small batch-1 inputs (their narrow subsets
        # at 7x7) to its slower im2col path.
        self.onednn: bool = self.flat_gather and torch.backends.mkldnn.is_available()

    def matrix(self, out_idx: Tensor | None, in_idx: Tensor | None) -> Tensor:
        """A 1x1 conv's (k_out, k_in) weight matrix for the given subsets (a transposed view with
        ``columns_t``)."""
        if in_idx is not None and out_idx is None and self.columns_t:
            return self.weight_t.index_select(0, in_idx).t()
        w = self.weight[:, :, 0, 0]
        if out_idx is not None:
            w = self.weight_ext[:, :, 0, 0].index_select(0, out_idx)
        return w if in_idx is None else w.index_select(1, in_idx)

    def kernel(self, out_idx: Tensor | None, in_idx: Tensor | None) -> Tensor:
        """The (k_out, k_in, kh, kw) weight for the given subsets (contiguous)."""
        c_out, c_in, kh, kw = self.weight.shape
        if in_idx is not None and out_idx is not None and self.flat_gather:
            flat = (out_idx[:, None] * c_in + in_idx[None, :]).flatten()
            w = self.weight_ext.view(-1, kh * kw).index_select(0, flat)
            return w.view(out_idx.shape[0], in_idx.shape[0], kh, kw)
        if self.pointwise:
            return self.matrix(out_idx, in_idx).contiguous()[:, :, None, None]
        w = self.weight if out_idx is None else self.weight_ext.index_select(0, out_idx)
        # rows first: the strided column gather then touches fewer elements
        return w if in_idx is None else w.index_select(1, in_idx)

    def run(
        self,
        x: Tensor,
        out_idx: Tensor | None = None,
        in_idx: Tensor | None = None,
        residual: Tensor | None = None,
    ) -> Tensor:
        """x (N, len(in_idx) or C_in, H, W) -> (N, len(out_idx) or C_out, H', W'), in the memory format of x.

        With ``residual`` (the output's shape) it returns relu(conv(x) + residual) instead, the residual
        entering a 1x1 conv's GEMM as its accumulator (two passes over the output fewer than add + relu).
        """
        b = self.bias if out_idx is None else self.bias_ext.index_select(0, out_idx)
        n, c, h, wd = x.shape
        if self.pointwise and (x.stride(1) == 1 or n == 1):
            # A 1x1 conv is one GEMM: channels_last (N * H * W, C_in) @ (C_in, C_out) for any batch, or
            # NCHW (C_out, C_in) @ (C_in, H * W) for one image; the output keeps the layout.
            w = self.matrix(out_idx, in_idx)
            if x.stride(1) == 1:
                a = x.permute(0, 2, 3, 1).reshape(n * h * wd, c)
                if residual is None:
                    y = torch.addmm(b, a, w.t())
                else:
                    y = torch.addmm(residual.permute(0, 2, 3, 1).reshape(n * h * wd, -1), a, w.t())
                    _add_relu_(y, b)
                return y.view(n, h, wd, -1).permute(0, 3, 1, 2)
            a = x.reshape(c, h * wd)
            if residual is None:
                y = torch.addmm(b[:, None], w, a)
            else:
                y = torch.addmm(residual.reshape(-1, h * wd), w, a)
                _add_relu_(y, b[:, None])
            return y.view(1, -1, h, wd)
        w = self.kernel(out_idx, in_idx)
        if self.onednn and x.device.type == "cpu" and x.dtype == torch.float32:
            if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
                x = x.contiguous()
            y = torch.ops.aten.mkldnn_convolution(x, w, b, self.padding, self.stride, self.dilation, 1)
        else:
            y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation)
        if residual is not None:
            _add_relu_(y, residual)
        return y


class FoldedGate(nn.Module):
    """Gating MLP with its BatchNorm1d folded into fc1: x (N, C, H, W) -> mask (N, G) bool.

    ``forced`` is -1 (decide: logits > 0), 0 (all closed) or 1 (all open), from ``ChannelGate.force``.
    """

    def __init__(self, gate: ChannelGate) -> None:
        super().__init__()
        bn = gate.bn
        s = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
        # Pre-transposed, so that each layer is one addmm.
        self.register_buffer("w1t", (gate.fc1.weight.detach() * s[:, None]).t().contiguous())
        self.register_buffer("b1", (bn.bias.detach() - bn.running_mean.detach() * s).contiguous())
        self.register_buffer("w2t", gate.fc2.weight.detach().t().contiguous())
        self.register_buffer("b2", gate.fc2.bias.detach().clone())
        self.num_gates: int = gate.num_gates
        self.forced: int = -1 if gate.force is None else int(gate.force != 0)

    def logits(self, x: Tensor) -> Tensor:
        """x (N, C, H, W) -> (N, G), in the dtype of the weights."""
        # The mean's 1 / (H * W) rides on the GEMM's alpha: one op less per gate.
        h = torch.addmm(self.b1, x.sum((2, 3)), self.w1t, alpha=1.0 / (x.shape[2] * x.shape[3])).relu_()
        return torch.addmm(self.b2, h, self.w2t)

    def forward(self, x: Tensor) -> Tensor:
        if self.forced >= 0:
            return torch.full([x.shape[0], self.num_gates], self.forced, dtype=torch.bool, device=x.device)
        return self.logits(x) > 0


class IdentityShortcut(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class PadShortcutFolded(nn.Module):
    """Option A: x[:, :, ::s, ::s] with zero channels appended, (N, C, H, W) -> (N, C + extra, H/s, W/s)."""

    def __init__(self, shortcut: PadShortcut) -> None:
        super().__init__()
        self.extra: int = shortcut.extra
        self.stride: int = shortcut.stride

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], [0, 0, 0, 0, 0, self.extra])


class ProjShortcut(nn.Module):
    """1x1 conv + BatchNorm projection, folded: (N, C, H, W) -> (N, C', H/s, W/s)."""

    def __init__(self, downsample: nn.Sequential) -> None:
        super().__init__()
        self.conv = FoldedConv(downsample[0], downsample[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.conv.run(x)


def _shortcut(downsample: nn.Module | None) -> nn.Module:
    if downsample is None:
        return IdentityShortcut()
    if isinstance(downsample, PadShortcut):
        return PadShortcutFolded(downsample)
    if (
        isinstance(downsample, nn.Sequential)
        and len(downsample) == 2
        and isinstance(downsample[0], nn.Conv2d)
        and isinstance(downsample[1], nn.BatchNorm2d)
    ):
        return ProjShortcut(downsample)
    raise ValueError(f"unsupported shortcut module: {downsample}")


def open_idx(m: Tensor, align: int, pad: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """(G,) bool gates -> (rows, cols): indices of the open channels as rows of the conv computing them and
    as columns of the conv reading them; (None, None) when all are open (use the full weights).

    With align > 1 a non-empty subset of k channels is padded to min(ceil(k / align) * align, G): the extra
    rows index the zero output channel G of the producing conv (exactly 0 out), the extra columns channel 0
    (any would do), as they only ever multiply those zeros. ``pad`` (2, align) int64 holds [G..., 0...], so
    the padding is one slice and one cat. Few distinct shapes keep oneDNN's primitive cache warm (every new
    conv shape costs a kernel generation), and oneDNN pads channels to blocks of 8 anyway.
    """
    idx = m.nonzero().flatten()
    k, g = idx.numel(), m.numel()
    if k == g:
        return None, None
    if align > 1 and k > 0:
        n_pad = min((k + align - 1) // align * align, g) - k
        if n_pad > 0:
            return torch.cat([idx, pad[0, :n_pad]]), torch.cat([idx, pad[1, :n_pad]])
    return idx, idx


def _pad_idx(g: int, align: int, device: torch.device) -> Tensor:
    """The (2, align) padding indices of :func:`open_idx` for G gates: row G (the zero channel), column 0."""
    return torch.tensor([[g] * align, [0] * align], dtype=torch.long, device=device)


def _layout(x: Tensor, nhwc_min_pixels: int) -> Tensor:
    """x channels_last if it has at least ``nhwc_min_pixels`` pixels, else NCHW (no-op if it already is)."""
    if x.shape[2] * x.shape[3] >= nhwc_min_pixels:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


class _ConditionalBlock(nn.Module):
    """What both folded gated blocks share: run the gate, then the batch path of ``masked_mode``.

    Subclasses define ``gate``, ``shortcut``, ``subset`` and ``masked``.
    """

    def forward(self, x: Tensor) -> Tensor:
        x = _layout(x, self.nhwc_min_pixels)
        mask = self.gate(x)
        self.last_mask = mask
        sc = self.shortcut(x)
        if self.masked_mode:
            return self.masked(x, sc, mask)
        if x.shape[0] == 1:
            return self.subset(x, sc, mask[0], None)
        return self.subset(x, sc, mask.any(0), mask.to(x.dtype))


class ConditionalBasicBlock(_ConditionalBlock):
    """Folded gated BasicBlock: x (N, C_in, H, W) -> (N, planes, H/s, W/s); skips closed channels.

    ``last_mask`` keeps the (N, planes) bool gates of the last forward pass. ``masked_mode``: run the dense
    convs times the mask instead of the union of the open channels.
    """

    def __init__(
        self, block: BasicBlock, align: int = 1, nhwc_min_pixels: int = NEVER, masked_mode: bool = False
    ) -> None:
        super().__init__()
        assert block.gate is not None
        self.gate = FoldedGate(block.gate)
        self.conv1 = FoldedConv(block.conv1, block.bn1, zero_row=align > 1)
        self.conv2 = FoldedConv(block.conv2, block.bn2)
        self.register_buffer("pad", _pad_idx(block.conv1.out_channels, align, block.conv1.weight.device))
        self.shortcut = _shortcut(block.downsample)
        self.align: int = align
        self.nhwc_min_pixels: int = nhwc_min_pixels
        self.masked_mode: bool = masked_mode
        self.last_mask = self.gate.b2.new_zeros(0, self.gate.num_gates, dtype=torch.bool)  # (0, G) until run

    def subset(self, x: Tensor, sc: Tensor, m: Tensor, scale: Tensor | None) -> Tensor:
        """Whole batch x on the channels open in m (G,) bool; sc: shortcut(x).

        scale (N, G) or None: per-image 0/1 gates multiplied into conv1's outputs (union mode).
        """
        rows, cols = open_idx(m, self.align, self.pad)
        if rows is not None and rows.numel() == 0:
            # conv2 sees only zeros: its output is its folded bias everywhere.
            return sc.add(self.conv2.bias[:, None, None]).relu_()
        h = self.conv1.run(x, out_idx=rows).relu_()
        if scale is not None:
            s = scale if cols is None else scale.index_select(1, cols)
            h = h.mul_(s[:, :, None, None])
        return self.conv2.run(h, in_idx=cols, residual=sc)

    def masked(self, x: Tensor, sc: Tensor, mask: Tensor) -> Tensor:
        """Dense folded convs times the (N, G) mask."""
        h = self.conv1.run(x).relu_().mul_(mask.to(x.dtype)[:, :, None, None])
        return self.conv2.run(h, residual=sc)


class ConditionalBottleneck(_ConditionalBlock):
    """Folded gated Bottleneck: x (N, C_in, H, W) -> (N, 4 * width, H/s, W/s); skips closed channels.

    The gate has 2 * width outputs: [conv1 gates, conv2 gates]. ``last_mask``: (N, 2 * width) bool.
    """

    def __init__(
        self, block: Bottleneck, align: int = 1, nhwc_min_pixels: int = NEVER, masked_mode: bool = False
    ) -> None:
        super().__init__()
        assert block.gate is not None
        self.gate = FoldedGate(block.gate)
        self.conv1 = FoldedConv(block.conv1, block.bn1, zero_row=align > 1)
        self.conv2 = FoldedConv(block.conv2, block.bn2, zero_row=align > 1)
        # A transposed copy of conv3's weight (20 MB more for ResNet-50): reading the open input channels as
        # contiguous rows is faster than gathering columns.
        self.conv3 = FoldedConv(block.conv3, block.bn3, columns_t=True)
        self.register_buffer("pad", _pad_idx(block.width, align, block.conv1.weight.device))
        self.shortcut = _shortcut(block.downsample)
        self.align: int = align
        self.nhwc_min_pixels: int = nhwc_min_pixels
        self.masked_mode: bool = masked_mode
        self.width: int = block.width
        self.last_mask = self.gate.b2.new_zeros(0, self.gate.num_gates, dtype=torch.bool)  # (0, G) until run

    def subset(self, x: Tensor, sc: Tensor, m: Tensor, scale: Tensor | None) -> Tensor:
        """As :meth:`ConditionalBasicBlock.subset`, with m (2 * width,) and scale (N, 2 * width) or None."""
        r1, c1 = open_idx(m[: self.width], self.align, self.pad)
        r2, c2 = open_idx(m[self.width :], self.align, self.pad)
        if r2 is not None and r2.numel() == 0:
            return sc.add(self.conv3.bias[:, None, None]).relu_()  # conv3 sees only zeros
        s1: Tensor | None = None
        s2: Tensor | None = None
        if scale is not None:
            s1, s2 = scale[:, : self.width], scale[:, self.width :]
            if c1 is not None:
                s1 = s1.index_select(1, c1)
            if c2 is not None:
                s2 = s2.index_select(1, c2)
        if r1 is not None and r1.numel() == 0:
            # conv2 sees only zeros: relu(bias2) on its open outputs, constant over space; conv3 is 1x1,
            # so its output is the per-channel constant bias3 + W3[:, open] @ relu(bias2[open]).
            b2 = self.conv2.bias
            w3 = self.conv3.weight[:, :, 0, 0]
            if r2 is not None and c2 is not None:
                b2, w3 = self.conv2.bias_ext.index_select(0, r2), w3.index_select(1, c2)
            h2 = b2.relu()[None]
            if s2 is not None:
                h2 = h2 * s2  # (N, k2): per-image gates of the union
            c = torch.addmm(self.conv3.bias, h2, w3.t())  # (1 or N, C_out)
            return sc.add(c[:, :, None, None]).relu_()
        h = self.conv1.run(x, out_idx=r1).relu_()
        if s1 is not None:
            h = h.mul_(s1[:, :, None, None])
        h = self.conv2.run(h, out_idx=r2, in_idx=c1).relu_()
        if s2 is not None:
            h = h.mul_(s2[:, :, None, None])
        return self.conv3.run(h, in_idx=c2, residual=sc)

    def masked(self, x: Tensor, sc: Tensor, mask: Tensor) -> Tensor:
        """Dense folded convs times the (N, 2 * width) mask."""
        m = mask.to(x.dtype)[:, :, None, None]
        h = self.conv1.run(x).relu_().mul_(m[:, : self.width])
        h = self.conv2.run(h).relu_().mul_(m[:, self.width :])
        return self.conv3.run(h, residual=sc)


class DenseBlock(nn.Module):
    """Folded BasicBlock or Bottleneck without gate (or with its gates forced open): x -> block(x)."""

    def __init__(self, block: BasicBlock | Bottleneck, nhwc_min_pixels: int = NEVER) -> None:
        super().__init__()
        self.nhwc_min_pixels: int = nhwc_min_pixels
        convs = [FoldedConv(block.conv1, block.bn1), FoldedConv(block.conv2, block.bn2)]
        if isinstance(block, Bottleneck):
            convs.append(FoldedConv(block.conv3, block.bn3))
        self.inner = nn.ModuleList(convs[:-1])
        self.last = convs[-1]
        self.shortcut = _shortcut(block.downsample)

    def forward(self, x: Tensor) -> Tensor:
        x = _layout(x, self.nhwc_min_pixels)
        sc = self.shortcut(x)
        h = x
        for conv in self.inner:
            h = conv.run(h).relu_()
        return self.last.run(h, residual=sc)


def _convert_block(block: nn.Module, align: int, nhwc_min_pixels: int, masked_mode: bool) -> nn.Module:
    if isinstance(block, BasicBlock | Bottleneck):
        if block.gate is None or block.gate.force == 1.0:
            return DenseBlock(block, nhwc_min_pixels)
        if isinstance(block, BasicBlock):
            return ConditionalBasicBlock(block, align, nhwc_min_pixels, masked_mode)
        return ConditionalBottleneck(block, align, nhwc_min_pixels, masked_mode)
    raise ValueError(f"unsupported block type: {type(block).__name__}")


class ConditionalCore(nn.Module):
    """The scriptable network: x (N, 3, H, W) -> logits (N, num_classes).

    batch_mode: "union" or "masked" ("auto" already resolved by :func:`resolve_batch_mode`).
    """

    def __init__(
        self, model: CifarResNet | ResNet, batch_mode: str, align: int, nhwc_min_pixels: int
    ) -> None:
        super().__init__()
        self.batch_mode = batch_mode
        self.stem = FoldedConv(model.conv1, model.bn1)
        self.maxpool: bool = isinstance(model, ResNet)
        self.nhwc_min_pixels: int = nhwc_min_pixels
        self.blocks = nn.ModuleList(
            [
                _convert_block(b, align, nhwc_min_pixels, batch_mode == "masked")
                for name in ("layer1", "layer2", "layer3", "layer4")
                for b in getattr(model, name, ())
            ]
        )
        self.register_buffer("fc_weight", model.fc.weight.detach().clone())
        self.register_buffer("fc_bias", model.fc.bias.detach().clone())

    def stem_forward(self, x: Tensor) -> Tensor:
        """The image x (N, 3, H, W) -> the input of the first block."""
        x = self.stem.run(_layout(x, self.nhwc_min_pixels)).relu_()
        if self.maxpool:
            x = F.max_pool2d(x, [3, 3], [2, 2], [1, 1])
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_forward(x)
        for block in self.blocks:
            x = block(x)
        return F.linear(x.mean((2, 3)), self.fc_weight, self.fc_bias)


class ConditionalResNet(nn.Module):
    """Eval-only conditional network, x (N, 3, H, W) -> logits (N, num_classes); see the module docstring.

    Attributes:
        core: the :class:`ConditionalCore` (a ``torch.jit.ScriptModule`` when ``scripted``).
        block_names: qualified names of the blocks of the original model, e.g. ``"layer1.0"``.
    """

    def __init__(
        self,
        model: CifarResNet | ResNet,
        batch_mode: BatchMode = "auto",
        script: bool = True,
        channel_align: int | None = None,
        nhwc_min_pixels: int | None = None,
    ) -> None:
        super().__init__()
        batch_mode = resolve_batch_mode(batch_mode, model.fc.weight.device)
        if channel_align is None:
            channel_align = 1 if isinstance(model, CifarResNet) else DEFAULT_IMAGENET_ALIGN
        if channel_align < 1:
            raise ValueError(f"channel_align must be >= 1, got {channel_align}")
        self.channel_align = channel_align
        w = model.conv1.weight
        self._input = (w.shape[1], w.dtype, w.device)  # what forward takes: channels, dtype, device
        if nhwc_min_pixels is None:
            nhwc_min_pixels = NEVER if isinstance(model, CifarResNet) else NHWC_MIN_PIXELS
        self.block_names = [
            f"{name}.{i}"
            for name in ("layer1", "layer2", "layer3", "layer4")
            for i in range(len(getattr(model, name, ())))
        ]
        core = ConditionalCore(model, batch_mode, channel_align, nhwc_min_pixels).eval()
        self.scripted = False
        if script:
            try:
                with warnings.catch_warnings():
                    # torch.jit.script is deprecated in favour of torch.compile, which is far slower here
                    # (benchmarks/README.md); it still works and removes most of the per-op Python overhead.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    core = torch.jit.script(core)
                self.scripted = True
            except Exception as e:  # a torch without (working) TorchScript: same results, a bit slower
                warnings.warn(
                    f"torch.jit.script failed, running in eager mode: {e}", RuntimeWarning, stacklevel=3
                )
        self.core = core
        self.train(False)

    @property
    def batch_mode(self) -> str:
        """The batch mode in use: "union" or "masked" ("auto" resolved for the model's device)."""
        return self.core.batch_mode

    def _apply(self, fn, recurse=True):
        # .to() / .half() / .cuda() would not update the weight views and TorchScript attributes.
        raise RuntimeError("move or cast the gated model first, then call compile_conditional on it")

    def train(self, mode: bool = True) -> ConditionalResNet:
        if mode:
            raise RuntimeError("a compiled conditional network is inference-only; train the original model")
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, 3, H, W) -> logits (N, num_classes), computed under torch.inference_mode."""
        c, dtype, device = self._input
        if x.dim() != 4 or x.shape[1] != c or x.dtype != dtype or x.device != device:
            raise ValueError(
                f"the compiled network takes (N, {c}, H, W) {dtype} images on {device}, got a "
                f"{tuple(x.shape)} {x.dtype} tensor on {x.device}"
            )
        # optimized_execution(False): TorchScript's profiling executor would spend seconds of CPU optimising
        # the graph on the first calls, for no steady-state gain here (benchmarks/README.md).
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            return self.core(x)

    def masks(self) -> dict[str, Tensor]:
        """{block name: (N, G) bool gates} of the gated blocks in the last forward pass (in order)."""
        out = {}
        # children(), not iteration: indexing/iterating a scripted ModuleList yields the original Python
        # modules, whose attributes the scripted forward does not update.
        for name, block in zip(self.block_names, self.core.blocks.children(), strict=True):
            m = getattr(block, "last_mask", None)
            if m is not None and m.shape[0] > 0:
                out[name] = m
        return out


def compile_conditional(
    model: nn.Module,
    batch_mode: BatchMode = "auto",
    script: bool = True,
    channel_align: int | None = None,
    nhwc_min_pixels: int | None = None,
) -> ConditionalResNet:
    """Convert a gated CifarResNet / ResNet into an eval-only module that skips its closed channels.

    model: trained gated model, on the device the compiled module will run on. Its train/eval mode does not
        matter: BatchNorm running statistics are used and the gates are the eval gates 1[logits > 0]; a gate
        with ``force`` set keeps its forced value. The weights are copied, so later changes to ``model`` are
        not seen.
    batch_mode: "auto" | "union" | "masked" (module docstring). "auto" is "union" on CPU (a batch of one
        then runs its exact open-channel subsets) and "masked" on other devices.
    script: compile the network with ``torch.jit.script`` (falls back to eager with a RuntimeWarning if that
        fails); it removes most of the per-op interpreter overhead, which matters for small convs.
        False: plain eager PyTorch.
    channel_align: pad each open-channel subset to a multiple of this many channels with exact-zero
        channels (see :func:`open_idx`). None: 8 for ImageNet ResNets, 1 (no padding) for CIFAR ResNets.
    nhwc_min_pixels: the stem and each block run channels_last (NHWC) when their input has at least this
        many pixels (H * W), NCHW otherwise; the layout only changes speed. None: :data:`NHWC_MIN_PIXELS`
        (28 x 28) for ImageNet ResNets, never for CIFAR ResNets (32x32 inputs: small convs on im2col).

    Returns a :class:`ConditionalResNet`, x (N, 3, H, W) -> logits (N, num_classes), equal to the model's
    eval-mode output up to the rounding of the BatchNorm folding.

    A model without any gate is converted too, with a UserWarning: BatchNorm is folded, nothing is skipped.
    That is the fair dense baseline for latency comparisons, and a dense model passed by mistake still
    computes its own function.
    """
    net = unwrap(model)
    if not isinstance(net, CifarResNet | ResNet):
        raise ValueError(
            f"compile_conditional supports CifarResNet and ResNet models, got {type(net).__name__}"
        )
    if not any(isinstance(m, ChannelGate) for m in net.modules()):
        warnings.warn(
            f"{type(net).__name__} has no channel gates: compile_conditional only folds its BatchNorm layers "
            "and nothing is skipped",
            UserWarning,
            stacklevel=2,
        )
    return ConditionalResNet(net, batch_mode, script, channel_align, nhwc_min_pixels)
