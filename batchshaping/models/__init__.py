"""Model zoo: dense and gated ResNets for CIFAR and ImageNet, PSPNet for Cityscapes, behind one registry.

Each model is a builder function in its family's module, registered under its own name by
``@register_model``; :func:`create_model` builds one by name.
"""

from batchshaping.models.blocks import BasicBlock, Bottleneck, GateConfig
from batchshaping.models.cifar_resnet import (
    CifarResNet,
    gated_resnet20,
    gated_resnet32,
    gated_resnet56,
    gated_resnet110,
    resnet20,
    resnet32,
    resnet56,
    resnet110,
)
from batchshaping.models.pspnet import PSPNet, gated_pspnet50, pspnet50
from batchshaping.models.registry import (
    ModelInfo,
    create_model,
    list_models,
    model_from_config,
    model_info,
    register_model,
)
from batchshaping.models.resnet import (
    ResNet,
    gated_resnet18,
    gated_resnet34,
    gated_resnet50,
    resnet18,
    resnet34,
    resnet50,
)

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "GateConfig",
    "ModelInfo",
    "PSPNet",
    "ResNet",
    "create_model",
    "gated_pspnet50",
    "gated_resnet18",
    "gated_resnet20",
    "gated_resnet32",
    "gated_resnet34",
    "gated_resnet50",
    "gated_resnet56",
    "gated_resnet110",
    "list_models",
    "model_from_config",
    "model_info",
    "pspnet50",
    "register_model",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet50",
    "resnet56",
    "resnet110",
]
