"""CIFAR ResNets of He et al. (2016), section 4.2: 6n+2 layers, widths 16/32/64, 3 stages.

resnet20/32/56/110 are n = 3/5/9/18. The default shortcut is option A of the paper (identity, with
stride-2 subsampling and zero-padded extra channels, no parameters); ``shortcut="B"`` uses 1x1 projection
convs where the shape changes (named ``downsample.0/1`` as in torchvision).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from batchshaping.models.blocks import BasicBlock, GateConfig, conv1x1, conv3x3, init_resnet_weights
from batchshaping.models.registry import register_model


class PadShortcut(nn.Module):
    """Option A shortcut: x[:, :, ::s, ::s] with zero channels appended up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class CifarResNet(nn.Module):
    """x: (N, 3, 32, 32) -> logits (N, num_classes). ``gate=None`` builds the dense network."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        gate: GateConfig | None = None,
        shortcut: str = "A",
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(
                f"shortcut must be 'A' (zero-pad identity) or 'B' (1x1 projection), got {shortcut!r}"
            )
        n = (depth - 2) // 6
        self.shortcut = shortcut
        self.inplanes = widths[0]
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], n, 1, gate)
        self.layer2 = self._make_layer(widths[1], n, 2, gate)
        self.layer3 = self._make_layer(widths[2], n, 2, gate)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        init_resnet_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int, gate: GateConfig | None) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            if self.shortcut == "A":
                downsample = PadShortcut(self.inplanes, planes, stride)
            else:
                downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, gate)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, gate=gate) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


# Dense builders pass gate=None themselves: a ``gate`` argument to one is an error, not a gated model under a
# dense name.


@register_model(input_size=(3, 32, 32), gated=False, family="cifar")
def resnet20(num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-20 (He et al., 2016, section 4.2): a 3x3 stem conv, 3 stages of 3 BasicBlocks at widths
    16/32/64 and a linear classifier. Default input 3x32x32 and 10 classes: 40.55 MMACs per image.
    ``kwargs`` go to :class:`CifarResNet` (``shortcut="B"``: 1x1 projection shortcuts)."""
    return CifarResNet(20, num_classes, gate=None, **kwargs)


@register_model(input_size=(3, 32, 32), gated=False, family="cifar")
def resnet32(num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32 (He et al., 2016, section 4.2): a 3x3 stem conv, 3 stages of 5 BasicBlocks at widths
    16/32/64 and a linear classifier. Default input 3x32x32 and 10 classes: 68.86 MMACs per image.
    ``kwargs`` go to :class:`CifarResNet` (``shortcut="B"``: 1x1 projection shortcuts)."""
    return CifarResNet(32, num_classes, gate=None, **kwargs)


@register_model(input_size=(3, 32, 32), gated=False, family="cifar")
def resnet56(num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-56 (He et al., 2016, section 4.2): a 3x3 stem conv, 3 stages of 9 BasicBlocks at widths
    16/32/64 and a linear classifier. Default input 3x32x32 and 10 classes: 125.49 MMACs per image.
    ``kwargs`` go to :class:`CifarResNet` (``shortcut="B"``: 1x1 projection shortcuts)."""
    return CifarResNet(56, num_classes, gate=None, **kwargs)


@register_model(input_size=(3, 32, 32), gated=False, family="cifar")
def resnet110(num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-110 (He et al., 2016, section 4.2): a 3x3 stem conv, 3 stages of 18 BasicBlocks at
    widths 16/32/64 and a linear classifier. Default input 3x32x32 and 10 classes: 252.89 MMACs per image.
    ``kwargs`` go to :class:`CifarResNet` (``shortcut="B"``: 1x1 projection shortcuts)."""
    return CifarResNet(110, num_classes, gate=None, **kwargs)


@register_model(input_size=(3, 32, 32), gated=True, family="cifar")
def gated_resnet20(num_classes: int = 10, gate: GateConfig | None = None, **kwargs: Any) -> CifarResNet:
    """Gated CIFAR ResNet-20: :func:`resnet20` with a gating module in each of its 9 BasicBlocks that
    switches the output channels of conv1 per image (``gate``: the gates' options, default
    ``GateConfig()``). Default input 3x32x32 and 10 classes: 40.55 MMACs with every gate open, plus 0.01
    MMACs for the gating modules."""
    return CifarResNet(20, num_classes, gate=gate or GateConfig(), **kwargs)


@register_model(input_size=(3, 32, 32), gated=True, family="cifar")
def gated_resnet32(num_classes: int = 10, gate: GateConfig | None = None, **kwargs: Any) -> CifarResNet:
    """Gated CIFAR ResNet-32, the paper's main CIFAR-10 model: :func:`resnet32` with a gating module in each
    of its 15 BasicBlocks that switches the output channels of conv1 per image (``gate``: the gates'
    options, default ``GateConfig()``). Default input 3x32x32 and 10 classes: 68.86 MMACs with every gate
    open, plus 0.02 MMACs for the gating modules."""
    return CifarResNet(32, num_classes, gate=gate or GateConfig(), **kwargs)


@register_model(input_size=(3, 32, 32), gated=True, family="cifar")
def gated_resnet56(num_classes: int = 10, gate: GateConfig | None = None, **kwargs: Any) -> CifarResNet:
    """Gated CIFAR ResNet-56: :func:`resnet56` with a gating module in each of its 27 BasicBlocks that
    switches the output channels of conv1 per image (``gate``: the gates' options, default
    ``GateConfig()``). Default input 3x32x32 and 10 classes: 125.49 MMACs with every gate open, plus 0.03
    MMACs for the gating modules."""
    return CifarResNet(56, num_classes, gate=gate or GateConfig(), **kwargs)


@register_model(input_size=(3, 32, 32), gated=True, family="cifar")
def gated_resnet110(num_classes: int = 10, gate: GateConfig | None = None, **kwargs: Any) -> CifarResNet:
    """Gated CIFAR ResNet-110: :func:`resnet110` with a gating module in each of its 54 BasicBlocks that
    switches the output channels of conv1 per image (``gate``: the gates' options, default
    ``GateConfig()``). Default input 3x32x32 and 10 classes: 252.89 MMACs with every gate open, plus 0.06
    MMACs for the gating modules."""
    return CifarResNet(110, num_classes, gate=gate or GateConfig(), **kwargs)
