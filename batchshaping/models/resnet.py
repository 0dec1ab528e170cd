"""ImageNet ResNets (resnet18/34/50 and gated variants) with torchvision's parameter names.

``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ``fc``, ... are torchvision's names,
so a torchvision ResNet state_dict loads into the gated model with ``strict=False`` and the missing keys are
exactly the gate parameters (``layerX.Y.gate.*``). ``replace_stride_with_dilation`` gives the dilated
backbones used for segmentation (output stride 8 with ``(False, True, True)``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from batchshaping.models.blocks import BasicBlock, Bottleneck, GateConfig, conv1x1, init_resnet_weights
from batchshaping.models.registry import register_model


class ResNet(nn.Module):
    """x: (N, 3, H, W) -> logits (N, num_classes). ``gate=None`` builds the dense network."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        gate: GateConfig | None = None,
        replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, gate)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, gate, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, gate, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, gate, replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_resnet_weights(self)
        if zero_init_residual:
            for m in self.modules():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
        gate: GateConfig | None,
        dilate: bool = False,
    ) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, gate, previous_dilation)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, gate=gate, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (N, 3, H, W) -> layer4 features (N, 512 * expansion, H / 32, W / 32) (less with dilation)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.forward_features(x)).flatten(1))


# Dense builders pass gate=None themselves: a ``gate`` argument to one is an error, not a gated model under a
# dense name.


@register_model(input_size=(3, 224, 224), gated=False, family="imagenet")
def resnet18(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ImageNet ResNet-18 (He et al., 2016) in torchvision's layout and names: a 7x7 stem conv and max pool,
    4 stages of 2/2/2/2 BasicBlocks at widths 64/128/256/512 and a linear classifier. Default input
    3x224x224 and 1000 classes: 1.81 GMACs per image. ``kwargs`` go to :class:`ResNet` (e.g.
    ``replace_stride_with_dilation``)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, gate=None, **kwargs)


@register_model(input_size=(3, 224, 224), gated=False, family="imagenet")
def resnet34(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ImageNet ResNet-34 (He et al., 2016) in torchvision's layout and names: a 7x7 stem conv and max pool,
    4 stages of 3/4/6/3 BasicBlocks at widths 64/128/256/512 and a linear classifier. Default input
    3x224x224 and 1000 classes: 3.66 GMACs per image. ``kwargs`` go to :class:`ResNet` (e.g.
    ``replace_stride_with_dilation``)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, gate=None, **kwargs)


@register_model(input_size=(3, 224, 224), gated=False, family="imagenet")
def resnet50(num_classes: int = 1000, **kwargs: Any) -> ResNet:
    """ImageNet ResNet-50 (He et al., 2016) in torchvision's layout and names: a 7x7 stem conv and max pool,
    4 stages of 3/4/6/3 Bottlenecks (v1.5: stride on the 3x3) at widths 64/128/256/512, expanded 4x, and a
    linear classifier. Default input 3x224x224 and 1000 classes: 4.09 GMACs per image. ``kwargs`` go to
    :class:`ResNet` (e.g. ``replace_stride_with_dilation``)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, gate=None, **kwargs)


@register_model(input_size=(3, 224, 224), gated=True, family="imagenet")
def gated_resnet18(num_classes: int = 1000, gate: GateConfig | None = None, **kwargs: Any) -> ResNet:
    """Gated ImageNet ResNet-18: :func:`resnet18` with a gating module in each of its 8 BasicBlocks that
    switches the output channels of conv1 per image (``gate``: the gates' options, default
    ``GateConfig()``); a torchvision resnet18 state_dict loads (strict=False) with only the gates missing.
    Default input 3x224x224 and 1000 classes: 1.81 GMACs with every gate open, plus 0.05 MMACs for the
    gating modules."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, gate=gate or GateConfig(), **kwargs)


@register_model(input_size=(3, 224, 224), gated=True, family="imagenet")
def gated_resnet34(num_classes: int = 1000, gate: GateConfig | None = None, **kwargs: Any) -> ResNet:
    """Gated ImageNet ResNet-34: :func:`resnet34` with a gating module in each of its 16 BasicBlocks that
    switches the output channels of conv1 per image (``gate``: the gates' options, default
    ``GateConfig()``); a torchvision resnet34 state_dict loads (strict=False) with only the gates missing.
    Default input 3x224x224 and 1000 classes: 3.66 GMACs with every gate open, plus 0.11 MMACs for the
    gating modules."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, gate=gate or GateConfig(), **kwargs)


@register_model(input_size=(3, 224, 224), gated=True, family="imagenet")
def gated_resnet50(num_classes: int = 1000, gate: GateConfig | None = None, **kwargs: Any) -> ResNet:
    """Gated ImageNet ResNet-50: :func:`resnet50` with one gating module in each of its 16 Bottlenecks that
    switches the output channels of conv1 and of conv2 per image (2 x width gates; see
    :mod:`~batchshaping.models.blocks`); a torchvision resnet50 state_dict loads (strict=False) with only
    the gates missing. Default input 3x224x224 and 1000 classes: 4.09 GMACs with every gate open, plus 0.33
    MMACs for the gating modules."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, gate=gate or GateConfig(), **kwargs)
