"""Removable units (an attention's heads, an MLP's hidden neurons): how a module declares them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class UnitPart:
    """Where the units of a block live in one parameter: unit ``u`` is the indices
    ``[offset + u * size, offset + (u + 1) * size)`` along ``dim``."""

    param: str  # dotted name: relative to the declaring module in ``Units``, absolute in ``OutputGroups``
    dim: int
    offset: int
    size: int


@dataclass(frozen=True)
class Units:
    """Removable units a module declares through ``structured_units()`` (an attention's heads, an MLP's
    hidden neurons): ``count`` units of one ``kind``, each the union of its slices in ``parts``. Such a
    module also has ``remove_units(kind, keep)``, which :func:`haloprune.pruning.slim` calls."""

    kind: str
    count: int
    parts: tuple[UnitPart, ...]


class UnitSource(Protocol):
    """What declares a module's units: the module itself (haloprune's ViT) or an adapter around a module of
    an optional package (:mod:`haloprune.core.hf_units`)."""

    def structured_units(self) -> list[Units]: ...

    def dead_units(self, kind: str) -> torch.Tensor:
        """Bool per unit: its output is a constant (it can be removed, folded into what follows)."""
        ...

    def remove_units(self, kind: str, keep: torch.Tensor) -> None:
        """Remove, in place, the (dead) units ``keep`` leaves out, folding their constant outputs in."""
        ...
