"""Sparsity-inducing penalties, by name: ``build_penalty("halo", model, xi=..., psi=...)``.

One file per family; adding one is one class (a :class:`~haloprune.penalties.base.Penalty`) and one line
in :data:`PENALTIES`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from haloprune.core.registry import Registry
from haloprune.penalties.adaptive import AdaptiveLasso
from haloprune.penalties.base import Penalty
from haloprune.penalties.group import GroupLasso
from haloprune.penalties.halo import HALO
from haloprune.penalties.l1 import L1
from haloprune.penalties.nonconvex import MCP, SCAD
from haloprune.penalties.shared import LayerHALO, SharedHALO
from haloprune.penalties.structured import GroupHALO

PENALTIES: Registry[Penalty] = Registry(
    "penalty",
    {
        "l1": L1,
        "halo": HALO,
        "adaptive-lasso": AdaptiveLasso,
        "mcp": MCP,
        "scad": SCAD,
        "sws": SharedHALO,
        "layer-halo": LayerHALO,
        "group-lasso": GroupLasso,
        "group-halo": GroupHALO,
    },
)


def build_penalty(name: str, model: nn.Module, **kwargs: Any) -> Penalty:
    """Build a registered penalty for ``model``."""
    return PENALTIES[name](model, **kwargs)


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
