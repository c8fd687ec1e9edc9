"""Folded-concave penalties, elementwise and summed over the penalised weights: MCP and SCAD.

Both are written with ``torch.where`` so autograd gives each region's own derivative (both penalties are
continuously differentiable, so the derivative is also continuous across region boundaries), and the
derivative at ``w = 0`` is 0 (the subgradient ``torch.abs`` uses). The functional forms :func:`mcp` and
:func:`scad` act on any tensor.
"""

from __future__ import annotations

from typing import Unpack

import torch
from torch import nn

from haloprune.penalties.base import Penalty, SelectionArgs


def mcp(w: torch.Tensor, xi: float, psi: float) -> torch.Tensor:
    """Minimax concave penalty (Zhang 2010), elementwise, as in the HALO reference.

    ``ξ|w| − w²/(2ψ)`` for ``|w| <= ψξ``, else ``ψξ²/2`` (ξ: strength, ψ: concavity, usually called γ).
    """
    a = w.abs()
    return torch.where(a <= psi * xi, xi * a - a * a / (2.0 * psi), torch.full_like(a, psi * xi * xi / 2.0))


def scad(w: torch.Tensor, xi: float, a: float) -> torch.Tensor:
    """Smoothly clipped absolute deviation (Fan & Li 2001), elementwise, with ``λ = ξ`` and shape ``a > 2``.

    ``ξ|w|`` for ``|w| <= ξ``; ``(2aξ|w| − w² − ξ²) / (2(a−1))`` for ``ξ < |w| <= aξ``; ``ξ²(a+1)/2`` beyond.
    """
    t = w.abs()
    inner = xi * t
    middle = (2.0 * a * xi * t - t * t - xi * xi) / (2.0 * (a - 1.0))
    outer = torch.full_like(t, xi * xi * (a + 1.0) / 2.0)
    return torch.where(t <= xi, inner, torch.where(t <= a * xi, middle, outer))


class MCP(Penalty):
    """``Σ_j MCP(w_j; ξ, ψ)`` over the penalised weights (see :func:`mcp`); ``psi`` must be > 0."""

    strengths = ("xi", "psi")

    def __init__(
        self,
        model: nn.Module,
        xi: float,
        psi: float,
        **selection: Unpack[SelectionArgs],
    ) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        if psi <= 0:
            raise ValueError(f"psi (MCP's concavity) must be > 0, got {psi}")
        self.check_acts(xi=xi, psi=psi)
        super().__init__(model, **selection)
        self.xi, self.psi = float(xi), float(psi)

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        return sum(mcp(w, self.xi, self.psi).sum() for w in self.weights(model))

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Fraction of penalised weights in the flat region ``|w| > ψξ`` (no shrinkage there)."""
        thr = self.psi * self.xi
        flat = sum(int((w.abs() > thr).sum()) for w in self.weights())
        return {"flat_fraction": flat / self.num_penalized}

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, psi={self.psi:g}, penalized={self.num_penalized}"


class SCAD(Penalty):
    """``Σ_j SCAD(w_j; λ=ξ, a)`` over the penalised weights (see :func:`scad`); ``a`` must be > 2."""

    def __init__(
        self,
        model: nn.Module,
        xi: float,
        a: float = 3.7,
        **selection: Unpack[SelectionArgs],
    ) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        if not a > 2:
            raise ValueError(f"a (SCAD's shape) must be > 2, got {a}")
        self.check_acts(xi=xi)
        super().__init__(model, **selection)
        self.xi, self.a = float(xi), float(a)

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        return sum(scad(w, self.xi, self.a).sum() for w in self.weights(model))

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Fraction of penalised weights in the flat region ``|w| > aξ`` (no shrinkage there)."""
        thr = self.a * self.xi
        flat = sum(int((w.abs() > thr).sum()) for w in self.weights())
        return {"flat_fraction": flat / self.num_penalized}

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, a={self.a:g}, penalized={self.num_penalized}"
