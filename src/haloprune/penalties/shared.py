"""HALO variants with fewer learned scales: one λ for the whole model (``sws``) or one per layer.

* ``sws`` — the HALO reference's ``--ws`` (weight sharing): a single trainable λ for every penalised weight,
  ``ξ · Σ_j |w_j| / λ²  +  ψ · λ²``.
* ``layer-halo`` — one trainable λ per penalised tensor (layer),
  ``ξ · Σ_l ||w_l||_1 / λ_l²  +  ψ · | Σ_l |λ_l| − p |`` (``form="l2"`` squares the last term, as in HALO).

As in :class:`~haloprune.penalties.halo.penalty.HALO`, λ is an ``nn.Parameter`` (give ``penalty.parameters()``
to the optimizer; it is in the ``state_dict``), :meth:`project_` clamps it back to ``[lambda_min, ∞)``
after each step (``penalty.attach(optimizer)``), and the shrinkage term reads ``max(λ, lambda_min)``, so
the loss stays finite whatever the optimizer does. Inside that range value and gradients are the formula's.
"""

from __future__ import annotations

from typing import Literal, Unpack

import torch
from torch import nn

from haloprune.penalties.base import BudgetTerm, ChecksParameterNames, Penalty, SelectionArgs


class _LearnedScale(ChecksParameterNames, Penalty):
    """Shared plumbing: ξ/ψ/λ checks, λ's floor, and the penalised-parameter check on load."""

    learns = True
    strengths = ("xi", "psi")

    def __init__(
        self,
        model: nn.Module,
        xi: float,
        psi: float,
        lambda_init: float,
        lambda_min: float,
        *,
        per_tensor: bool,
        **selection: Unpack[SelectionArgs],
    ) -> None:
        if xi < 0 or psi < 0:
            raise ValueError(f"xi and psi must be >= 0, got xi={xi}, psi={psi}")
        self.check_acts(xi=xi, psi=psi)
        if not 0 < lambda_min <= lambda_init:
            raise ValueError(f"need 0 < lambda_min <= lambda_init, got {lambda_min} and {lambda_init}")
        super().__init__(model, **selection)
        self.xi, self.psi = float(xi), float(psi)
        self.lambda_min = float(lambda_min)
        w0 = self.weights()[0]
        dtype = w0.dtype if w0.is_floating_point() else torch.get_default_dtype()
        size = (len(self.param_names),) if per_tensor else ()
        self.lam = nn.Parameter(torch.full(size, float(lambda_init), dtype=dtype, device=w0.device))

    def _lam(self) -> torch.Tensor:
        """λ as the shrinkage term reads it: ``max(λ, lambda_min)``."""
        return self.lam.clamp_min(self.lambda_min)

    @torch.no_grad()
    def project_(self) -> None:
        self.lam.clamp_(min=self.lambda_min)


class SharedHALO(_LearnedScale):
    """HALO with a single shared, trainable scale (the reference's ``--ws``).

    ``ξ · Σ_j |w_j| / λ²  +  ψ · λ²``, ``λ`` a 0-dim parameter ``self.lam`` initialised to ``lambda_init``
    and kept ``>= lambda_min``.
    """

    def __init__(
        self,
        model: nn.Module,
        xi: float,
        psi: float,
        lambda_init: float = 1.0,
        lambda_min: float = 1e-3,
        **selection: Unpack[SelectionArgs],
    ) -> None:
        super().__init__(model, xi, psi, lambda_init, lambda_min, per_tensor=False, **selection)

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        l1 = sum(w.abs().sum() for w in self.weights(model))
        return self.xi * l1 / self._lam().square() + self.psi * self.lam.square()

    def stats(self) -> dict[str, float]:
        return {"lambda": self.lam.item()}

    def extra_repr(self) -> str:
        return (
            f"xi={self.xi:g}, psi={self.psi:g}, lambda_min={self.lambda_min:g}, "
            f"penalized={self.num_penalized}"
        )


class _GroupedScale(BudgetTerm, _LearnedScale):
    """One trainable λ per group of weights: ``ξ · Σ_g m_g / λ_g²  +  ψ · | Σ_g |λ_g| − p |`` (``form="l2"``
    squares the last term), where ``m_g`` is the group's magnitude (:meth:`group_magnitudes`) and ``self.lam``
    has one entry per group. Subclasses say what a group is."""

    def __init__(
        self,
        model: nn.Module,
        xi: float,
        psi: float,
        p: float = 0.0,
        form: Literal["l1", "l2"] = "l1",
        lambda_init: float = 1.0,
        lambda_min: float = 1e-3,
        **selection: Unpack[SelectionArgs],
    ) -> None:
        self._init_budget(p, form)
        super().__init__(model, xi, psi, lambda_init, lambda_min, per_tensor=True, **selection)
        num_groups = self._setup_groups()
        if num_groups != self.lam.numel():
            w0 = self.lam
            self.lam = nn.Parameter(
                torch.full((num_groups,), float(lambda_init), dtype=w0.dtype, device=w0.device)
            )

    def _setup_groups(self) -> int:
        """Set up whatever defines the groups; return how many there are (here: one per tensor)."""
        return len(self.param_names)

    def group_magnitudes(self, model: nn.Module | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        shrink = (self.group_magnitudes(model).to(self.lam.dtype) / self._lam().square()).sum()
        return self.xi * shrink + self.psi * self.budget_term(self.lam.abs().sum())

    def _lambda_stats(self) -> dict[str, float]:
        lam = self.lam.detach()
        return {
            "lambda_mean": lam.mean().item(),
            "lambda_min": lam.min().item(),
            "lambda_max": lam.max().item(),
            "lambda_at_floor": (lam <= self.lambda_min).double().mean().item(),
        }

    def _repr(self, groups: str) -> str:
        return (
            f"xi={self.xi:g}, psi={self.psi:g}, p={self.p:g}, form={self.form!r}, "
            f"lambda_min={self.lambda_min:g}, {groups}, penalized={self.num_penalized}"
        )


class LayerHALO(_GroupedScale):
    """HALO with one trainable scale per penalised tensor (layer).

    ``ξ · Σ_l ||w_l||_1 / λ_l²  +  ψ · | Σ_l |λ_l| − p |`` (``form="l2"``: the last term squared), with
    ``self.lam`` of shape ``(number of penalised tensors,)`` in penalised-parameter order.
    """

    def lambdas(self) -> dict[str, torch.Tensor]:
        """λ per penalised parameter (0-dim views into ``self.lam``)."""
        return {n: self.lam[i] for i, n in enumerate(self.param_names)}

    def group_magnitudes(self, model: nn.Module | None = None) -> torch.Tensor:
        """``||w_l||_1`` of every penalised tensor."""
        return torch.stack([w.abs().sum() for w in self.weights(model)])

    def stats(self) -> dict[str, float]:
        out = self._lambda_stats()
        out.update(
            {f"lambda/{n}": v.item() for n, v in zip(self.param_names, self.lam.detach(), strict=True)}
        )
        return out

    def extra_repr(self) -> str:
        return self._repr(f"layers={len(self.param_names)}")
