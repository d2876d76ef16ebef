"""Backbones: CIFAR-variant ResNet-18 and ResNeXt-50 32x4d (docs/protocol.md §1.3)."""

from mixnb.models.resnet import (
    BACKBONES,
    INITS,
    STAGES,
    FeatureMix,
    ResNetCifar,
    build_model,
    resnet18_cifar,
    resnext50_32x4d_cifar,
)

__all__ = [
    "BACKBONES",
    "INITS",
    "STAGES",
    "FeatureMix",
    "ResNetCifar",
    "build_model",
    "resnet18_cifar",
    "resnext50_32x4d_cifar",
]
