"""Model registry: ``build_model("lenet-300-100")``."""

from __future__ import annotations

from torch import nn

from ..registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model by name (see ``MODELS.names()``)."""
    return MODELS[name](**kwargs)


from . import lenet, resnet, vgg  # noqa: E402,F401  (registers the models)

__all__ = ["MODELS", "build_model"]
