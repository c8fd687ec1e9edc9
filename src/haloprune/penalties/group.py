"""Group lasso over output units (structured sparsity): whole neurons and filters go to zero together.

:class:`~haloprune.core.layers.OutputGroups` is the one definition of a "group" (an output unit of a
penalised layer), shared with group pruning (:func:`haloprune.pruning.group_prune`).
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import nn

from haloprune.core.layers import output_groups
from haloprune.core.params import unwrap
from haloprune.penalties.base import Penalty, SelectionArgs


class GroupLasso(Penalty):
    """Group lasso (Yuan & Lin 2006): ``ξ · Σ_g sqrt(n_g) · ||w_g||_2``.

    Groups are the output units of the penalised layers (see :class:`OutputGroups`; with
    ``include_bias=True`` a unit's bias joins its group); ``n_g`` is the group's size.
    """

    def __init__(self, model: nn.Module, xi: float, **selection: Unpack[SelectionArgs]) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        self.check_acts(xi=xi)
        super().__init__(model, **selection)
        self.xi = float(xi)
        self.groups = output_groups(unwrap(model), self.param_names)

    @property
    def num_groups(self) -> int:
        return self.groups.num_groups

    def group_norms(self, model: nn.Module | None = None) -> list[torch.Tensor]:
        """``||w_g||_2`` per layer, one entry per output unit."""
        return self.groups.norms(self.weights(model))

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        norms = self.group_norms(model)
        return self.xi * sum(n_g**0.5 * n.sum() for n_g, n in zip(self.groups.sizes, norms, strict=True))

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Fraction of groups (output units) that are exactly zero."""
        zero = sum(int((n == 0).sum()) for n in self.group_norms())
        return {"groups_zero_fraction": zero / self.num_groups}

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, groups={self.num_groups}, penalized={self.num_penalized}"
