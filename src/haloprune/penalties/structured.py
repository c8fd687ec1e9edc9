"""Structured HALO: one learned shrinkage scale per output neuron / filter, so whole units go to zero.

``group-halo`` is HALO (:class:`~haloprune.penalties.halo.penalty.HALO`) lifted from single weights to groups,

    ξ · Σ_g ||w_g||_2 / λ_g²  +  ψ · | Σ_g |λ_g| − p |        (``form="l2"``: the last term squared)

where a group is an output unit of a penalised layer (row of a ``Linear``, filter of a ``Conv``) or a unit
a module declares (an attention head, an MLP hidden neuron; see :class:`~haloprune.core.layers.OutputGroups`)
and every group has its own trainable ``λ_g``. As in
HALO, units that matter keep a large λ and are barely shrunk; the rest get a small λ and their whole
weight vector is driven to zero, which is what lets :func:`haloprune.pruning.slim` remove them physically.

There are only as many λ as output units (a few hundred), so the penalty goes through autograd: add
``penalty()`` to the loss, give ``penalty.parameters()`` to the optimizer and ``penalty.attach(opt)`` so λ
is clamped back to ``[lambda_min, ∞)`` after every step. The shrinkage term reads ``max(λ, lambda_min)``.
"""

from __future__ import annotations

import torch
from torch import nn

from haloprune.core.layers import output_groups
from haloprune.penalties.shared import _GroupedScale


class GroupHALO(_GroupedScale):
    """HALO over output units: ``ξ · Σ_g ||w_g||_2 / λ_g² + ψ · |Σ_g |λ_g| − p|`` (``form="l2"`` squares).

    ``self.lam`` has one entry per group, in the order of :attr:`groups` (layers in module order, then
    output units). With ``include_bias=True`` a unit's bias joins its group.
    """

    def _setup_groups(self) -> int:
        self.groups = output_groups(self.__dict__["_model"], self.param_names)
        return self.groups.num_groups

    @property
    def num_groups(self) -> int:
        return self.groups.num_groups

    def group_norms(self, model: nn.Module | None = None) -> torch.Tensor:
        """``||w_g||_2`` of every group, flat, in the order of ``self.lam``."""
        return torch.cat(self.groups.norms(self.weights(model)))

    group_magnitudes = group_norms

    def lambdas(self) -> dict[str, torch.Tensor]:
        """λ per block of groups (a layer's weight name, or ``<module>.heads`` / ``.neurons``): one entry
        per group (views into ``self.lam``)."""
        chunks = self.lam.split(self.groups.counts)
        return dict(zip(self.groups.block_names(), chunks, strict=True))

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        return {
            **self._lambda_stats(),
            "groups_zero_fraction": (self.group_norms() == 0).double().mean().item(),
        }

    def extra_repr(self) -> str:
        return self._repr(f"groups={self.num_groups}")
