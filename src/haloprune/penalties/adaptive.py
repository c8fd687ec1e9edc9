"""Adaptive lasso (Zou 2006): an L1 penalty with fixed per-weight coefficients from a first fit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Unpack

import torch
from torch import nn

from haloprune.penalties.base import ChecksParameterNames, Penalty, SelectionArgs


class AdaptiveLasso(ChecksParameterNames, Penalty):
    """``ξ · Σ_j c_j |w_j|`` with ``c_j = 1 / (|ŵ_j| + eps)^γ`` fixed from reference weights ``ŵ``.

    ``reference`` maps parameter names to the first fit's tensors (``model.state_dict()`` of the trained
    model will do; extra entries are ignored). ``reference=None`` uses the model's weights at construction
    time, so the two-stage recipe is::

        train(model)                                      # first fit (e.g. plain or with L1)
        penalty = AdaptiveLasso(model, xi=1e-4, gamma=1)  # coefficients from the trained weights
        train(model, penalty)                             # second fit, with the adaptive penalty

    The coefficients are one flat buffer ``self.coef`` (penalised-parameter order, each tensor flattened,
    like HALO's ``lam``), so they are in the ``state_dict`` but not trained. :meth:`refresh_` recomputes
    them from a model or a reference dict. They are computed in float64 and capped at the largest finite
    value of the weights' dtype, so they stay finite. ``eps`` (default 1e-3) bounds the largest coefficient
    at ``eps^-γ``: after a first fit many weights sit near zero, and an unbounded 1/|ŵ| makes the
    subgradient steps of SGD on those weights explode (seen with eps = 1e-8: NaN within 50 steps).
    """

    def __init__(
        self,
        model: nn.Module,
        xi: float,
        gamma: float = 1.0,
        reference: Mapping[str, torch.Tensor] | None = None,
        eps: float = 1e-3,
        **selection: Unpack[SelectionArgs],
    ) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        self.check_acts(xi=xi)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        super().__init__(model, **selection)
        self.xi, self.gamma, self.eps = float(xi), float(gamma), float(eps)
        w0 = self.weights()[0]
        dtype = w0.dtype if w0.is_floating_point() else torch.get_default_dtype()
        self.register_buffer("coef", torch.empty(self.num_penalized, dtype=dtype, device=w0.device))
        self.refresh_(reference=reference)

    @torch.no_grad()
    def refresh_(
        self, model: nn.Module | None = None, *, reference: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Recompute the coefficients from ``reference`` (a name → tensor dict) if given, else from the
        current weights of ``model`` (default: the model given at construction)."""
        if reference is not None:
            if model is not None:
                raise ValueError("give either model or reference, not both")
            missing = [n for n in self.param_names if n not in reference]
            if missing:
                raise ValueError(f"reference has no tensor for {missing}")
            ref = [torch.as_tensor(reference[n]) for n in self.param_names]
            for n, t, shape in zip(self.param_names, ref, self.shapes, strict=True):
                if tuple(t.shape) != shape:
                    raise ValueError(f"reference {n!r} has shape {tuple(t.shape)}, expected {shape}")
        else:
            ref = self.weights(model)
        f64 = torch.float64
        flat = torch.cat([t.detach().reshape(-1).to(device=self.coef.device, dtype=f64) for t in ref])
        coef = (flat.abs() + self.eps).pow(-self.gamma)
        self.coef.copy_(coef.clamp_max(torch.finfo(self.coef.dtype).max))

    def coefficients(self) -> dict[str, torch.Tensor]:
        """``c`` per penalised parameter, shaped like it (views into ``self.coef``)."""
        chunks = self.coef.split(self.numels)
        return {n: c.view(s) for n, c, s in zip(self.param_names, chunks, self.shapes, strict=True)}

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        w_abs = torch.cat([w.abs().flatten() for w in self.weights(model)])
        return self.xi * (self.coef.to(w_abs.dtype) * w_abs).sum()

    def stats(self) -> dict[str, float]:
        c = self.coef.detach()
        return {"coef_mean": c.mean().item(), "coef_median": c.median().item(), "coef_max": c.max().item()}

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, gamma={self.gamma:g}, eps={self.eps:g}, penalized={self.num_penalized}"
