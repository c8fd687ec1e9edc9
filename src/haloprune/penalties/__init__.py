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


from .lasso import HALO, L1  # noqa: E402

__all__ = ["HALO", "L1", "PENALTIES", "Penalty", "build_penalty"]
