"""Group lasso over output units (structured sparsity): whole neurons and filters go to zero together."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import PENALTIES
from .base import Penalty, Scope


@PENALTIES.register("group-lasso")
class GroupLasso(Penalty):
    """Group lasso (Yuan & Lin 2006): ``ξ · Σ_g sqrt(n_g) · ||w_g||_2``.

    A group is one output unit of a penalised layer: row ``o`` of a ``Linear`` weight, or filter ``o`` of a
    ``Conv`` weight (``weight[o]`` over in-channels × kernel); with ``include_bias=True`` the unit's bias
    ``bias[o]`` joins its group. ``n_g`` is the group's size. The norm is
    :func:`torch.linalg.vector_norm`, whose gradient at an all-zero group is the subgradient 0 (finite),
    and which is exact elsewhere (no smoothing ε).
    """

    def __init__(
        self, model: nn.Module, xi: float, *, scope: Scope = "all", include_bias: bool = False, **_: Any
    ) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        super().__init__(model, scope=scope, include_bias=include_bias)
        self.xi = float(xi)
        index = {n: i for i, n in enumerate(self.param_names)}
        # (index of the weight, index of its bias or None) per penalised layer.
        self.layers: list[tuple[int, int | None]] = []
        for i, name in enumerate(self.param_names):
            if name == "weight" or name.endswith(".weight"):
                bias = name[: -len("weight")] + "bias"
                self.layers.append((i, index.get(bias)))
        for i, b in self.layers:
            if b is not None and self.shapes[b] != (self.shapes[i][0],):
                raise ValueError(f"bias {self.param_names[b]!r} does not match its weight's output units")

    @property
    def num_groups(self) -> int:
        return sum(self.shapes[i][0] for i, _ in self.layers)

    def group_norms(self, model: nn.Module | None = None) -> list[torch.Tensor]:
        """``||w_g||_2`` per layer, one entry per output unit."""
        ws = self.weights(model)
        norms = []
        for i, b in self.layers:
            w = ws[i].reshape(ws[i].shape[0], -1)
            if b is not None:
                w = torch.cat([w, ws[b].unsqueeze(1).to(w.dtype)], dim=1)
            norms.append(torch.linalg.vector_norm(w, ord=2, dim=1))
        return norms

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        sizes = [self.numels[i] // self.shapes[i][0] + (b is not None) for i, b in self.layers]
        norms = self.group_norms(model)
        return self.xi * sum(n_g**0.5 * n.sum() for n_g, n in zip(sizes, norms, strict=True))

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Fraction of groups (output units) that are exactly zero."""
        zero = sum(int((n == 0).sum()) for n in self.group_norms())
        return {"groups_zero_fraction": zero / self.num_groups}

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, groups={self.num_groups}, penalized={self.num_penalized}"
