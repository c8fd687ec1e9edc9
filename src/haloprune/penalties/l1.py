"""L1 (lasso): a fixed, shared coefficient on |w|."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import nn

from haloprune.penalties.base import Penalty, SelectionArgs


class L1(Penalty):
    """Lasso: ``ξ · Σ_j |w_j|`` with a fixed, shared coefficient (HALO with λ frozen at 1)."""

    def __init__(self, model: nn.Module, xi: float, **selection: Unpack[SelectionArgs]) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        self.check_acts(xi=xi)
        super().__init__(model, **selection)
        self.xi = float(xi)

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.xi * sum(w.abs().sum() for w in self.weights(model))

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, penalized={self.num_penalized}"
