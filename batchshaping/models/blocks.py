"""Residual blocks with optional channel gates. Dense and gated blocks share one code path.

A block built with ``gate=None`` is the plain torchvision/He et al. block. With a :class:`GateConfig` it
gets a :class:`~batchshaping.gates.ChannelGate` named ``gate`` that reads the block input and switches
channels per image. All other parameters keep their names, so dense and gated models are comparable weight
for weight and a dense state_dict loads into the gated model (missing keys = gate parameters).

Gating choices:

* BasicBlock: the output channels of conv1 are gated, i.e. out = relu(bn1(conv1 x)) * g. A closed
  channel removes one output channel of conv1 and one input channel of conv2. The identity path is never
  gated, so a block with every gate closed reduces to relu(bn2.bias-term + shortcut).
* Bottleneck: the outputs of conv1 (1x1) and of conv2 (3x3) are gated channel-wise, with the logits of one
  gating module on the block input (G = 2 * width: the first half gates conv1, the second conv2). One module
  keeps the gate cost per block constant; gating both inner convs lets a closed channel save in all three
  convs (conv1 outputs, conv2 inputs and outputs, conv3 inputs). conv3's outputs feed the residual sum and
  are not gated, like the identity path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from batchshaping.gates import GATE_BIAS_INIT, ChannelGate


@dataclass
class GateConfig:
    """Options of the gating modules of a model (see :class:`~batchshaping.gates.ChannelGate`)."""

    hidden: int = 16
    tau: float = 2 / 3
    noise: bool = True
    bias_init: float = GATE_BIAS_INIT

    def build(self, in_channels: int, num_gates: int) -> ChannelGate:
        return ChannelGate(in_channels, num_gates, self.hidden, self.tau, self.noise, self.bias_init)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)


def init_resnet_weights(model: nn.Module) -> None:
    """He (fan_out) init for convs, BN scale 1 and shift 0 (torchvision's ResNet init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _fraction(mask: Tensor) -> Tensor:
    """(N,) fraction of open channels of an (N, G) mask or probability tensor; float64 stays float64."""
    return mask.to(torch.promote_types(mask.dtype, torch.float32)).mean(1)


def _apply_mask(out: Tensor, mask: Tensor) -> Tensor:
    """out (N, C, H, W) * mask (N, C) broadcast over H, W; keeps out's dtype (bf16 under autocast)."""
    return out * mask.to(out.dtype)[:, :, None, None]


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; conv1's output channels optionally gated.

    x: (N, inplanes, H, W) -> (N, planes, H / stride, W / stride).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        gate: GateConfig | None = None,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self.gate = gate.build(inplanes, planes) if gate is not None else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.gate is not None:
            out = _apply_mask(out, self.gate(x))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def gated_convs(self, mask: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-sample (open input fraction, open output fraction) of each gated conv, for MAC counting.

        mask: (N, G) 0/1 gates (or probabilities, for expected MACs).
        """
        f = _fraction(mask)
        one = torch.ones_like(f)
        return {"conv1": (one, f), "conv2": (f, one)}


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (torchvision's v1.5: stride on the 3x3).

    The outputs of conv1 and conv2 are optionally gated (see module docstring).
    x: (N, inplanes, H, W) -> (N, planes * 4, H / stride, W / stride).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        gate: GateConfig | None = None,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.width = width
        self.gate = gate.build(inplanes, 2 * width) if gate is not None else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        m1 = m2 = None
        if self.gate is not None:
            mask = self.gate(x)
            m1, m2 = mask[:, : self.width], mask[:, self.width :]
        out = self.relu(self.bn1(self.conv1(x)))
        if m1 is not None:
            out = _apply_mask(out, m1)
        out = self.relu(self.bn2(self.conv2(out)))
        if m2 is not None:
            out = _apply_mask(out, m2)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def gated_convs(self, mask: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Per-sample (open input fraction, open output fraction) of each gated conv; see BasicBlock."""
        f1 = _fraction(mask[:, : self.width])
        f2 = _fraction(mask[:, self.width :])
        one = torch.ones_like(f1)
        return {"conv1": (one, f1), "conv2": (f1, f2), "conv3": (f2, one)}
