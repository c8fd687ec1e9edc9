"""Group lasso over output units (structured sparsity): whole neurons and filters go to zero together.

:class:`OutputGroups` is the one definition of a "group" (an output unit of a penalised layer) shared by
the group penalties (:class:`GroupLasso`, :class:`~haloprune.penalties.structured.GroupHALO`) and by group
pruning (:func:`haloprune.pruning.group_prune`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Unpack

import torch
from torch import nn

from . import PENALTIES
from .base import Penalty, SelectionArgs


class OutputGroups:
    """The output units of a list of parameters, one group per unit.

    A group is one output unit of a layer: row ``o`` of a ``Linear`` weight, or filter ``o`` of a ``Conv``
    weight (``weight[o]`` over in-channels × kernel). When the layer's bias is in ``names`` too, ``bias[o]``
    joins its group. Parameters are named by dotted name, as everywhere in haloprune.
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> None:
        self.names, self.shapes = list(names), [tuple(s) for s in shapes]
        index = {n: i for i, n in enumerate(self.names)}
        # (index of the weight, index of its bias or None) per layer, in the order of ``names``.
        self.layers: list[tuple[int, int | None]] = []
        for i, name in enumerate(self.names):
            if name == "weight" or name.endswith(".weight"):
                self.layers.append((i, index.get(name[: -len("weight")] + "bias")))
        for i, b in self.layers:
            if b is not None and self.shapes[b] != (self.shapes[i][0],):
                raise ValueError(f"bias {self.names[b]!r} does not match its weight's output units")

    @property
    def counts(self) -> list[int]:
        """Number of groups (output units) per layer."""
        return [self.shapes[i][0] for i, _ in self.layers]

    @property
    def num_groups(self) -> int:
        return sum(self.counts)

    @property
    def sizes(self) -> list[int]:
        """Number of scalars in one group, per layer (fan-in, plus one with the bias)."""
        out = []
        for i, b in self.layers:
            fan_in = 1
            for d in self.shapes[i][1:]:
                fan_in *= d
            out.append(fan_in + (b is not None))
        return out

    def weight_names(self) -> list[str]:
        return [self.names[i] for i, _ in self.layers]

    def bias_names(self) -> list[str | None]:
        return [self.names[b] if b is not None else None for _, b in self.layers]

    def norms(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``||w_g||_2`` per layer, one entry per output unit; ``tensors`` in the order of ``names``.

        :func:`torch.linalg.vector_norm` has the finite subgradient 0 at an all-zero group and is exact
        elsewhere (no smoothing ε).
        """
        out = []
        for i, b in self.layers:
            w = tensors[i].reshape(tensors[i].shape[0], -1)
            if b is not None:
                w = torch.cat([w, tensors[b].unsqueeze(1).to(w.dtype)], dim=1)
            out.append(torch.linalg.vector_norm(w, ord=2, dim=1))
        return out


@PENALTIES.register("group-lasso")
class GroupLasso(Penalty):
    """Group lasso (Yuan & Lin 2006): ``ξ · Σ_g sqrt(n_g) · ||w_g||_2``.

    Groups are the output units of the penalised layers (see :class:`OutputGroups`; with
    ``include_bias=True`` a unit's bias joins its group); ``n_g`` is the group's size.
    """

    def __init__(self, model: nn.Module, xi: float, **selection: Unpack[SelectionArgs]) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        super().__init__(model, **selection)
        self.xi = float(xi)
        self.groups = OutputGroups(self.param_names, self.shapes)

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
