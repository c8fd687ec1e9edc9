"""MCP and SCAD (haloprune.penalties.nonconvex): value and gradients in every region, continuity at the
boundaries, saturation."""

from __future__ import annotations

import math

import pytest
import torch

from haloprune.penalties import (
    MCP,
    SCAD,
)
from haloprune.penalties.nonconvex import mcp, scad
from tests.helpers import conv_net, conv_net_weights, flat


def _set_flat_(ws: list[torch.Tensor], values: torch.Tensor) -> None:
    with torch.no_grad():
        for w, v in zip(ws, values.split([w.numel() for w in ws]), strict=True):
            w.copy_(v.view_as(w))


def _hand_mcp(w: float, xi: float, psi: float) -> tuple[float, float]:
    """(value, derivative) of MCP at w, with derivative 0 at w = 0."""
    a, s = abs(w), math.copysign(1.0, w) if w != 0 else 0.0
    if a <= psi * xi:
        return xi * a - a * a / (2 * psi), s * (xi - a / psi)
    return psi * xi * xi / 2, 0.0


def _hand_scad(w: float, xi: float, a: float) -> tuple[float, float]:
    t, s = abs(w), math.copysign(1.0, w) if w != 0 else 0.0
    if t <= xi:
        return xi * t, s * xi
    if t <= a * xi:
        return (2 * a * xi * t - t * t - xi * xi) / (2 * (a - 1)), s * (a * xi - t) / (a - 1)
    return xi * xi * (a + 1) / 2, 0.0


def _spread_(ws: list[torch.Tensor], lo: float, hi: float) -> torch.Tensor:
    """Fill the weights with a shuffled spread over [lo, hi] (off the region boundaries), one exact 0."""
    n = sum(w.numel() for w in ws)
    values = torch.linspace(lo, hi, n, dtype=torch.float64)[torch.randperm(n)] + 1e-4
    values[7] = 0.0
    _set_flat_(ws, values)
    return values


@pytest.mark.parametrize(("xi", "psi"), [(0.5, 2.0), (0.2, 3.0)])
def test_mcp_value_and_gradients_in_every_region(xi: float, psi: float) -> None:
    model = conv_net()
    ws = conv_net_weights(model)
    values = _spread_(ws, -2.5, 2.5)
    thr = psi * xi
    assert (values.abs() <= thr).sum() > 10 and (values.abs() > thr).sum() > 10  # both regions

    pen = MCP(model, xi=xi, psi=psi)
    value = pen()
    value.backward()
    hand = [_hand_mcp(v, xi, psi) for v in values.tolist()]
    assert value.item() == pytest.approx(math.fsum(h[0] for h in hand), rel=1e-12)
    torch.testing.assert_close(
        flat([w.grad for w in ws]), torch.tensor([h[1] for h in hand], dtype=torch.float64)
    )
    assert flat([w.grad for w in ws])[7].item() == 0.0  # the subgradient at 0
    assert pen.stats()["flat_fraction"] == pytest.approx((values.abs() > thr).double().mean().item())


@pytest.mark.parametrize(("xi", "a"), [(0.5, 3.7), (0.3, 2.5)])
def test_scad_value_and_gradients_in_every_region(xi: float, a: float) -> None:
    model = conv_net()
    ws = conv_net_weights(model)
    values = _spread_(ws, -3.0, 3.0)
    t = values.abs()
    assert (t <= xi).sum() > 10 and ((t > xi) & (t <= a * xi)).sum() > 10 and (t > a * xi).sum() > 10

    pen = SCAD(model, xi=xi, a=a)
    value = pen()
    value.backward()
    hand = [_hand_scad(v, xi, a) for v in values.tolist()]
    assert value.item() == pytest.approx(math.fsum(h[0] for h in hand), rel=1e-12)
    torch.testing.assert_close(
        flat([w.grad for w in ws]), torch.tensor([h[1] for h in hand], dtype=torch.float64)
    )
    assert flat([w.grad for w in ws])[7].item() == 0.0


@pytest.mark.parametrize(
    ("fn", "hand", "boundaries"),
    [
        (lambda w: mcp(w, 0.5, 2.0), lambda w: _hand_mcp(w, 0.5, 2.0), [1.0]),
        (lambda w: scad(w, 0.5, 3.7), lambda w: _hand_scad(w, 0.5, 3.7), [0.5, 1.85]),
    ],
    ids=["mcp", "scad"],
)
def test_mcp_and_scad_are_continuous_with_continuous_derivative_at_region_boundaries(
    fn, hand, boundaries
) -> None:
    for b in boundaries:
        for sign in (1.0, -1.0):
            pts = torch.tensor([b - 1e-9, b, b + 1e-9], dtype=torch.float64) * sign
            pts.requires_grad_()
            vals = fn(pts)
            vals.sum().backward()
            v, g = vals.detach(), pts.grad
            torch.testing.assert_close(v[0], v[2], rtol=0, atol=1e-8)
            torch.testing.assert_close(v[1], v[2], rtol=0, atol=1e-8)
            torch.testing.assert_close(g[0], g[2], rtol=0, atol=1e-8)
            assert v[1].item() == pytest.approx(hand(sign * b)[0], rel=1e-12)


def test_nonconvex_penalties_saturate_and_are_zero_at_zero() -> None:
    w = torch.tensor([0.0, 100.0, -100.0], dtype=torch.float64)
    assert mcp(w, 0.5, 2.0).tolist() == pytest.approx([0.0, 0.25, 0.25])
    assert scad(w, 0.5, 3.7).tolist() == pytest.approx([0.0, 0.25 * 4.7 / 2, 0.25 * 4.7 / 2])
