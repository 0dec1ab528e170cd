"""PSPNet (Zhao et al. 2017) on a dilated, optionally gated ResNet-50: the paper's Cityscapes model.

The backbone is :class:`~batchshaping.models.resnet.ResNet` with ``replace_stride_with_dilation=(False,
True, True)`` (output stride 8) and without its pooling/classifier; its parameters live under
``backbone.`` with torchvision's names, so ImageNet weights (a torchvision file or one of our ImageNet
runs) load into ``model.backbone`` (see :func:`batchshaping.checkpoint.load_pretrained`).

Head: pyramid pooling over bins (1, 2, 3, 6) (each: adaptive average pool -> 1x1 conv to C/4 -> BN ->
ReLU -> bilinear upsampling), concatenated with the features -> 3x3 conv 512 -> BN -> ReLU -> dropout 0.1
-> 1x1 conv to the classes -> bilinear upsampling to the input size. Differences from the original
PSPNet: torchvision's single 7x7 stem instead of three 3x3 convs (so standard ImageNet weights fit) and no
auxiliary layer3 head. The head is dense; gates sit in the backbone's residual blocks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchshaping.models.blocks import Bottleneck, GateConfig
from batchshaping.models.registry import register_model
from batchshaping.models.resnet import ResNet


class PyramidPooling(nn.Module):
    """x (N, C, H, W) -> (N, C + len(bins) * C // len(bins), H, W): x and its pooled, projected and
    upsampled summaries at each bin size."""

    def __init__(self, in_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        out = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, out, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels + out * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size, mode="bilinear", align_corners=False) for s in self.stages]
        return torch.cat([x, *pooled], 1)


class PSPNet(nn.Module):
    """x (N, 3, H, W) -> per-pixel logits (N, num_classes, H, W). ``gate=None`` builds the dense model."""

    def __init__(
        self,
        num_classes: int = 19,
        gate: GateConfig | None = None,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        bins: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = ResNet(
            Bottleneck, list(layers), gate=gate, replace_stride_with_dilation=(False, True, True)
        )
        del self.backbone.avgpool, self.backbone.fc  # features only
        self.ppm = PyramidPooling(512 * Bottleneck.expansion, bins)
        self.head = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, 512, 3, padding=1, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(512, num_classes, 1),
        )
        for m in [*self.ppm.modules(), *self.head.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.ppm(self.backbone.forward_features(x)))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)


# The dense builder passes gate=None itself: a ``gate`` argument to it is an error, not a gated model under a
# dense name.


@register_model(input_size=(3, 512, 1024), gated=False, family="segmentation")
def pspnet50(num_classes: int = 19, **kwargs: Any) -> PSPNet:
    """PSPNet-50 for Cityscapes: a dilated ResNet-50 backbone (3/4/6/3 Bottlenecks, output stride 8), pyramid
    pooling over bins 1/2/3/6 and a 3x3 conv head, with the logits upsampled to the input size. Default
    input 3x512x1024 and 19 classes: 354.09 GMACs per image. ``kwargs`` go to :class:`PSPNet` (e.g.
    ``dropout``)."""
    return PSPNet(num_classes, gate=None, **kwargs)


@register_model(input_size=(3, 512, 1024), gated=True, family="segmentation")
def gated_pspnet50(num_classes: int = 19, gate: GateConfig | None = None, **kwargs: Any) -> PSPNet:
    """Gated PSPNet-50, the paper's Cityscapes model: :func:`pspnet50` with one gating module in each of the
    backbone's 16 Bottlenecks that switches the output channels of conv1 and of conv2 per image (``gate``:
    the gates' options, default ``GateConfig()``); the pyramid pooling and the head stay dense. Default
    input 3x512x1024 and 19 classes: 354.09 GMACs with every gate open, plus 0.33 MMACs for the gating
    modules."""
    return PSPNet(num_classes, gate=gate or GateConfig(), **kwargs)
