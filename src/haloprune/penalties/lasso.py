"""L1 (lasso) and HALO (hierarchical adaptive lasso) penalties."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from . import PENALTIES
from .base import Penalty, Scope


@PENALTIES.register("l1")
class L1(Penalty):
    """Lasso: ``ξ · Σ_j |w_j|`` with a fixed, shared coefficient (HALO with λ frozen at 1)."""

    def __init__(
        self, model: nn.Module, xi: float, *, scope: Scope = "all", include_bias: bool = False, **_: Any
    ) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        super().__init__(model, scope=scope, include_bias=include_bias)
        self.xi = float(xi)

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.xi * sum(w.abs().sum() for w in self.weights(model))

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, penalized={self.num_penalized}"


@PENALTIES.register("halo")
class HALO(Penalty):
    """Hierarchical Adaptive Lasso (Seto, Wells & Zhang, SDM 2021).

    ``ξ · Σ_j |w_j| / λ_j²  +  ψ · | Σ_j |λ_j| − p |``  (``form="l2"`` squares the last term),

    with one trainable ``λ_j`` per penalised weight, all in one flat parameter ``self.lam`` (in penalised
    parameter order, each tensor flattened). λ is kept in ``[lambda_min, ∞)``: :meth:`project_` clamps it
    after each optimizer step (``attach`` does this for you), and the forward pass reads
    ``max(λ, lambda_min)`` so the loss stays finite even if a user's loop never projects. Inside the
    feasible set the value and gradients are exactly the reference formula's.
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
        if xi < 0 or psi < 0 or p < 0:
            raise ValueError(f"xi, psi and p must be >= 0, got xi={xi}, psi={psi}, p={p}")
        if form not in ("l1", "l2"):
            raise ValueError(f"form must be 'l1' or 'l2', got {form!r}")
        if not 0 < lambda_min <= lambda_init:
            raise ValueError(f"need 0 < lambda_min <= lambda_init, got {lambda_min} and {lambda_init}")
        super().__init__(model, scope=scope, include_bias=include_bias)
        self.xi, self.psi, self.p, self.form = float(xi), float(psi), float(p), form
        self.lambda_min = float(lambda_min)
        device = self.weights()[0].device
        self.lam = nn.Parameter(torch.full((self.num_penalized,), float(lambda_init), device=device))

    def lambdas(self) -> dict[str, torch.Tensor]:
        """λ per penalised parameter, shaped like it (views into ``self.lam``)."""
        chunks = self.lam.split(self.numels)
        return {n: c.view(s) for n, c, s in zip(self.param_names, chunks, self.shapes, strict=True)}

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        w_abs = torch.cat([w.abs().flatten() for w in self.weights(model)])
        lam = self.lam.clamp_min(self.lambda_min)
        shrink = (w_abs / lam.square()).sum()
        budget = self.lam.abs().sum() - self.p
        budget = budget.square() if self.form == "l2" else budget.abs()
        return self.xi * shrink + self.psi * budget

    @torch.no_grad()
    def project_(self) -> None:
        self.lam.clamp_(min=self.lambda_min)

    def stats(self) -> dict[str, float]:
        lam = self.lam.detach()
        n = lam.numel()
        q = [lam.kthvalue(max(1, min(n, round(f * n)))).values.item() for f in (0.01, 0.5, 0.99)]
        return {
            "lambda_mean": lam.mean().item(),
            "lambda_min": lam.min().item(),
            "lambda_p01": q[0],
            "lambda_median": q[1],
            "lambda_p99": q[2],
            "lambda_at_floor": (lam <= self.lambda_min).float().mean().item(),
        }

    def get_extra_state(self) -> dict[str, Any]:
        return {"param_names": list(self.param_names), "shapes": [list(s) for s in self.shapes]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        names, shapes = state["param_names"], [tuple(s) for s in state["shapes"]]
        if names != self.param_names or shapes != self.shapes:
            raise ValueError("this HALO state_dict was saved for a model with different penalised parameters")

    def extra_repr(self) -> str:
        return (
            f"xi={self.xi:g}, psi={self.psi:g}, p={self.p:g}, form={self.form!r}, "
            f"lambda_min={self.lambda_min:g}, penalized={self.num_penalized}"
        )
