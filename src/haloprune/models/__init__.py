"""Model registry: ``build_model("lenet-300-100")``. Adding a model is one class (or factory) and one line
in :data:`MODELS`."""

from __future__ import annotations

from torch import nn

from haloprune.core.registry import Registry
from haloprune.models.gpt import GPT
from haloprune.models.lenet import LeNet5, LeNet5Caffe, LeNet300100
from haloprune.models.resnet import CIFAR_RESNETS, resnet18, resnet50
from haloprune.models.vgg import VGG16BN, vgg16_bn_reference
from haloprune.models.vit import ViT

MODELS: Registry[nn.Module] = Registry(
    "model",
    {
        "lenet-300-100": LeNet300100,
        "lenet-5": LeNet5,
        "lenet-5-caffe": LeNet5Caffe,
        "vgg16-bn": VGG16BN,
        "vgg16-bn-reference": vgg16_bn_reference,
        "resnet18": resnet18,
        "resnet50": resnet50,
        **CIFAR_RESNETS,
        "vit": ViT,
        "gpt": GPT,
    },
)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model by name (see ``MODELS.names()``)."""
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "build_model"]
