"""Model zoo: dense and gated ResNets for CIFAR and ImageNet, PSPNet for Cityscapes, behind one registry."""

from batchshaping.models import cifar_resnet, pspnet, resnet  # noqa: F401  (registers the models)
from batchshaping.models.blocks import BasicBlock, Bottleneck, GateConfig
from batchshaping.models.registry import ModelInfo, create_model, list_models, model_info, register

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "GateConfig",
    "ModelInfo",
    "create_model",
    "list_models",
    "model_info",
    "register",
]
