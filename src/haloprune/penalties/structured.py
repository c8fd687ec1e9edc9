"""Structured HALO: one learned shrinkage scale per output neuron / filter, so whole units go to zero.

``group-halo`` is HALO (:class:`~haloprune.penalties.lasso.HALO`) lifted from single weights to groups,

    ξ · Σ_g ||w_g||_2 / λ_g²  +  ψ · | Σ_g |λ_g| − p |        (``form="l2"``: the last term squared)

where a group is an output unit of a penalised layer (row of a ``Linear``, filter of a ``Conv``; see
:class:`~haloprune.penalties.group.OutputGroups`) and every group has its own trainable ``λ_g``. As in
HALO, units that matter keep a large λ and are barely shrunk; the rest get a small λ and their whole
weight vector is driven to zero, which is what lets :func:`haloprune.slim` remove them physically.

There are only as many λ as output units (a few hundred), so the penalty goes through autograd: add
``penalty()`` to the loss, give ``penalty.parameters()`` to the optimizer and ``penalty.attach(opt)`` so λ
is clamped back to ``[lambda_min, ∞)`` after every step. The shrinkage term reads ``max(λ, lambda_min)``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from . import PENALTIES
from .base import BudgetTerm, Scope
from .group import OutputGroups
from .shared import _LearnedScale


@PENALTIES.register("group-halo")
class GroupHALO(BudgetTerm, _LearnedScale):
    """HALO over output units: ``ξ · Σ_g ||w_g||_2 / λ_g² + ψ · |Σ_g |λ_g| − p|`` (``form="l2"`` squares).

    ``self.lam`` has one entry per group, in the order of :attr:`groups` (layers in module order, then
    output units). With ``include_bias=True`` a unit's bias joins its group.
    """

    def __init__(
        self,
        model: nn.Module,
        xi: float,
        psi: float,
        p: float = 0.0,
        form: Literal["l1", "l2"] = "l1",
        lambda_init: float = 1.0,
        lambda_min: float = 1e-3,
        *,
        scope: Scope = "all",
        include_bias: bool = False,
        **_: Any,
    ) -> None:
        self._init_budget(p, form)
        super().__init__(
            model, xi, psi, lambda_init, lambda_min, per_tensor=False, scope=scope, include_bias=include_bias
        )
        self.groups = OutputGroups(self.param_names, self.shapes)
        w0 = self.lam
        self.lam = nn.Parameter(
            torch.full((self.groups.num_groups,), float(lambda_init), dtype=w0.dtype, device=w0.device)
        )

    @property
    def num_groups(self) -> int:
        return self.groups.num_groups

    def group_norms(self, model: nn.Module | None = None) -> torch.Tensor:
        """``||w_g||_2`` of every group, flat, in the order of ``self.lam``."""
        return torch.cat(self.groups.norms(self.weights(model)))

    def lambdas(self) -> dict[str, torch.Tensor]:
        """λ per penalised weight tensor: one entry per output unit (views into ``self.lam``)."""
        chunks = self.lam.split(self.groups.counts)
        return dict(zip(self.groups.weight_names(), chunks, strict=True))

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        norms = self.group_norms(model).to(self.lam.dtype)
        shrink = (norms / self._lam().square()).sum()
        return self.xi * shrink + self.psi * self.budget_term(self.lam.abs().sum())

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        lam = self.lam.detach()
        return {
            "lambda_mean": lam.mean().item(),
            "lambda_min": lam.min().item(),
            "lambda_max": lam.max().item(),
            "lambda_at_floor": (lam <= self.lambda_min).double().mean().item(),
            "groups_zero_fraction": (self.group_norms() == 0).double().mean().item(),
        }

    def extra_repr(self) -> str:
        return (
            f"xi={self.xi:g}, psi={self.psi:g}, p={self.p:g}, form={self.form!r}, "
            f"lambda_min={self.lambda_min:g}, groups={self.num_groups}, penalized={self.num_penalized}"
        )
