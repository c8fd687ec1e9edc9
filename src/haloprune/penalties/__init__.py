"""Sparsity-inducing penalties, by name: ``build_penalty("halo", model, xi=..., psi=...)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import Registry
from .base import Penalty

PENALTIES: Registry[Penalty] = Registry("penalty")


def build_penalty(name: str, model: nn.Module, **kwargs: Any) -> Penalty:
    """Build a registered penalty for ``model``."""
    return PENALTIES[name](model, **kwargs)


from .adaptive import AdaptiveLasso  # noqa: E402
from .group import GroupLasso  # noqa: E402
from .lasso import HALO, L1  # noqa: E402
from .nonconvex import MCP, SCAD  # noqa: E402
from .shared import LayerHALO, SharedHALO  # noqa: E402
from .structured import GroupHALO  # noqa: E402

__all__ = [
    "HALO",
    "L1",
    "MCP",
    "PENALTIES",
    "SCAD",
    "AdaptiveLasso",
    "GroupHALO",
    "GroupLasso",
    "LayerHALO",
    "Penalty",
    "SharedHALO",
    "build_penalty",
]
