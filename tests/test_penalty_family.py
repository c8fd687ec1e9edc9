"""The penalty family beyond L1/HALO (sws, layer-halo, MCP, SCAD, group lasso, adaptive lasso): value and
gradients against independent float64 hand computations, piecewise regions and their boundaries, λ's
floor under adversarial steps, and the registry-wide contract (build from PenaltyConfig, finite scalar,
state_dict round-trip)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from haloprune import build_model
from haloprune.config import PenaltyConfig
from haloprune.penalties import (
    MCP,
    PENALTIES,
    SCAD,
    AdaptiveLasso,
    GroupLasso,
    LayerHALO,
    SharedHALO,
    build_penalty,
)
from haloprune.penalties.base import valid_keywords
from haloprune.penalties.nonconvex import mcp, scad

NAMES = ["0.weight", "3.weight", "5.weight"]


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 4)
    ).double()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    return [params[n] for n in NAMES]


def _leaves(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in ts]


def _flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _set_flat_(ws: list[torch.Tensor], values: torch.Tensor) -> None:
    with torch.no_grad():
        for w, v in zip(ws, values.split([w.numel() for w in ws]), strict=True):
            w.copy_(v.view_as(w))


# ---------------------------------------------------------------------------------------------- sws


def test_sws_value_and_gradients_match_hand_computation() -> None:
    model = _net()
    pen = SharedHALO(model, xi=0.3, psi=0.02, lambda_init=0.7)
    assert pen.lam.shape == () and pen.lam.dtype == torch.float64 and pen.lam.item() == 0.7
    with torch.no_grad():
        pen.lam.fill_(0.6)
    ws = _weights(model)
    value = pen()
    value.backward()

    ws2 = _leaves(ws)
    lam2 = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    expected = 0.3 * sum(w.abs().sum() for w in ws2) / lam2**2 + 0.02 * lam2**2
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    for w, w2 in zip(ws, ws2, strict=True):
        torch.testing.assert_close(w.grad, w2.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pen.lam.grad, lam2.grad, rtol=1e-12, atol=1e-15)

    # Closed forms: dw = ξ sign(w)/λ², dλ = -2ξ Σ|w|/λ³ + 2ψλ.
    w = _flat([w.detach() for w in ws])
    torch.testing.assert_close(_flat([w.grad for w in ws]), 0.3 * torch.sign(w) / 0.6**2)
    torch.testing.assert_close(pen.lam.grad.item(), -2 * 0.3 * w.abs().sum().item() / 0.6**3 + 2 * 0.02 * 0.6)
    assert pen.stats() == {"lambda": pytest.approx(0.6)}
    assert list(pen.parameters()) == [pen.lam]


# ---------------------------------------------------------------------------------------- layer-halo


def _hand_layer_halo(ws, lams, xi, psi, p, form):
    shrink = sum(w.abs().sum() / lam**2 for w, lam in zip(ws, lams, strict=True))
    budget = sum(lam.abs() for lam in lams) - p
    return xi * shrink + psi * (budget**2 if form == "l2" else budget.abs())


@pytest.mark.parametrize("form", ["l1", "l2"])
@pytest.mark.parametrize("p", [0.0, 50.0])
def test_layer_halo_value_and_gradients_match_hand_computation(form: str, p: float) -> None:
    model = _net()
    pen = LayerHALO(model, xi=0.3, psi=0.02, p=p, form=form)
    assert pen.lam.shape == (3,) and set(pen.lambdas()) == set(NAMES)
    with torch.no_grad():
        pen.lam.uniform_(0.2, 2.0)
    ws = _weights(model)
    value = pen()
    value.backward()

    ws2 = _leaves(ws)
    lams2 = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in pen.lam.tolist()]
    expected = _hand_layer_halo(ws2, lams2, 0.3, 0.02, p, form)
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    for w, w2 in zip(ws, ws2, strict=True):
        torch.testing.assert_close(w.grad, w2.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pen.lam.grad, torch.stack([lam.grad for lam in lams2]), rtol=1e-12, atol=1e-15)

    if form == "l1":  # dλ_l = -2ξ ||w_l||_1 / λ_l³ + ψ sign(λ_l) sign(Σ|λ| - p)
        lam = pen.lam.detach()
        l1 = torch.stack([w.detach().abs().sum() for w in ws])
        s = torch.sign(lam.abs().sum() - p)
        torch.testing.assert_close(pen.lam.grad, -2 * 0.3 * l1 / lam**3 + 0.02 * torch.sign(lam) * s)
    stats = pen.stats()
    assert stats["lambda_min"] == pytest.approx(pen.lam.min().item())
    assert all(f"lambda/{n}" in stats for n in NAMES)


# --------------------------------------------------------------------------------------- λ's floor


@pytest.mark.parametrize("cls", [SharedHALO, LayerHALO])
@pytest.mark.parametrize("lr", [0.1, 10.0, 1e4])
def test_lambda_stays_above_floor_and_loss_finite_under_adversarial_steps(cls, lr: float) -> None:
    model = build_model("lenet-300-100")
    pen = cls(model, xi=1e-9, psi=1e-1, lambda_min=1e-3)
    opt = torch.optim.SGD([*model.parameters(), *pen.parameters()], lr=lr, momentum=0.9)
    pen.attach(opt)
    for _ in range(20):
        loss = pen()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert pen.lam.min().item() >= 1e-3
    assert torch.isfinite(pen())


@pytest.mark.parametrize("cls", [SharedHALO, LayerHALO])
def test_forward_reads_lambda_floor_even_without_projection(cls) -> None:
    model = _net()
    pen = cls(model, xi=1.0, psi=1.0, lambda_min=1e-3)
    with torch.no_grad():
        pen.lam.fill_(-5.0 if cls is SharedHALO else 0.0)
    value = pen()
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(pen.lam.grad).all()
    pen.project_()
    assert pen.lam.min().item() == 1e-3


# ------------------------------------------------------------------------------------- MCP and SCAD


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
    model = _net()
    ws = _weights(model)
    values = _spread_(ws, -2.5, 2.5)
    thr = psi * xi
    assert (values.abs() <= thr).sum() > 10 and (values.abs() > thr).sum() > 10  # both regions

    pen = MCP(model, xi=xi, psi=psi)
    value = pen()
    value.backward()
    hand = [_hand_mcp(v, xi, psi) for v in values.tolist()]
    assert value.item() == pytest.approx(math.fsum(h[0] for h in hand), rel=1e-12)
    torch.testing.assert_close(
        _flat([w.grad for w in ws]), torch.tensor([h[1] for h in hand], dtype=torch.float64)
    )
    assert _flat([w.grad for w in ws])[7].item() == 0.0  # the subgradient at 0
    assert pen.stats()["flat_fraction"] == pytest.approx((values.abs() > thr).double().mean().item())


@pytest.mark.parametrize(("xi", "a"), [(0.5, 3.7), (0.3, 2.5)])
def test_scad_value_and_gradients_in_every_region(xi: float, a: float) -> None:
    model = _net()
    ws = _weights(model)
    values = _spread_(ws, -3.0, 3.0)
    t = values.abs()
    assert (t <= xi).sum() > 10 and ((t > xi) & (t <= a * xi)).sum() > 10 and (t > a * xi).sum() > 10

    pen = SCAD(model, xi=xi, a=a)
    value = pen()
    value.backward()
    hand = [_hand_scad(v, xi, a) for v in values.tolist()]
    assert value.item() == pytest.approx(math.fsum(h[0] for h in hand), rel=1e-12)
    torch.testing.assert_close(
        _flat([w.grad for w in ws]), torch.tensor([h[1] for h in hand], dtype=torch.float64)
    )
    assert _flat([w.grad for w in ws])[7].item() == 0.0


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


# --------------------------------------------------------------------------------------- group lasso


def _hand_group_lasso(model: nn.Module, xi: float, include_bias: bool):
    """(value, {param name: gradient}) in float64, one output unit at a time."""
    value, grads = 0.0, {}
    for idx in (0, 3, 5):
        layer = model[idx]
        w, b = layer.weight.detach(), layer.bias.detach()
        gw, gb = torch.zeros_like(w), torch.zeros_like(b)
        for o in range(w.shape[0]):
            g = [*w[o].flatten().tolist(), *([b[o].item()] if include_bias else [])]
            norm = math.sqrt(math.fsum(x * x for x in g))
            scale = math.sqrt(len(g))
            value += xi * scale * norm
            if norm > 0:
                gw[o] = xi * scale * w[o] / norm
                gb[o] = xi * scale * b[o] / norm
        grads[f"{idx}.weight"] = gw
        if include_bias:
            grads[f"{idx}.bias"] = gb
    return value, grads


@pytest.mark.parametrize("include_bias", [False, True])
def test_group_lasso_value_and_gradients_match_hand_computation(include_bias: bool) -> None:
    model = _net()
    with torch.no_grad():  # an all-zero group in a Linear and in the Conv
        model[3].weight[2].zero_()
        model[3].bias[2] = 0.0
        model[0].weight[1].zero_()
        model[0].bias[1] = 0.0
    pen = GroupLasso(model, xi=0.3, include_bias=include_bias)
    assert pen.num_groups == 3 + 5 + 4
    value = pen()
    value.backward()
    expected, grads = _hand_group_lasso(model, 0.3, include_bias)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    params = dict(model.named_parameters())
    assert set(grads) == set(pen.param_names)
    for name, g in grads.items():
        assert torch.isfinite(params[name].grad).all()
        torch.testing.assert_close(params[name].grad, g, rtol=1e-12, atol=1e-15)
    assert model[3].weight.grad[2].abs().max().item() == 0.0
    assert model[0].weight.grad[1].abs().max().item() == 0.0
    if not include_bias:
        assert model[3].bias.grad is None
    assert pen.stats()["groups_zero_fraction"] == pytest.approx(2 / 12)


def test_group_lasso_gradient_is_finite_when_every_group_is_zero() -> None:
    model = _net()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    pen = GroupLasso(model, xi=1.0, include_bias=True)
    value = pen()
    assert value.item() == 0.0
    value.backward()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max().item() == 0.0


# ------------------------------------------------------------------------------------ adaptive lasso


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_adaptive_lasso_uses_construction_time_weights(gamma: float) -> None:
    model = _net()
    ws = _weights(model)
    w_hat = [w.detach().clone() for w in ws]
    pen = AdaptiveLasso(model, xi=0.3, gamma=gamma)
    assert pen.coef.dtype == torch.float64 and list(pen.parameters()) == []
    with torch.no_grad():  # the second fit moves the weights; the coefficients stay
        for w in ws:
            w.add_(0.1 * torch.randn_like(w))
    value = pen()
    value.backward()

    ws2 = _leaves(ws)
    coefs = [1.0 / (wh.abs() + 1e-3) ** gamma for wh in w_hat]
    expected = 0.3 * sum((c * w.abs()).sum() for c, w in zip(coefs, ws2, strict=True))
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    for w, w2, c in zip(ws, ws2, coefs, strict=True):
        torch.testing.assert_close(w.grad, w2.grad, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(w.grad, 0.3 * c * torch.sign(w.detach()), rtol=1e-12, atol=1e-15)
    for name, c in zip(NAMES, coefs, strict=True):
        torch.testing.assert_close(pen.coefficients()[name], c, rtol=1e-12, atol=0)

    pen.refresh_()  # now from the current weights
    torch.testing.assert_close(pen.coef, _flat([1.0 / (w.detach().abs() + 1e-3) ** gamma for w in ws]))


def test_adaptive_lasso_reference_dict_and_validation() -> None:
    model = _net()
    ref = {n: 2.0 * t for n, t in model.state_dict().items()}  # extra entries (biases) are ignored
    pen = AdaptiveLasso(model, xi=1.0, reference=ref, eps=1e-6)
    torch.testing.assert_close(pen.coef, _flat([1.0 / (ref[n].abs() + 1e-6) for n in NAMES]))
    with pytest.raises(ValueError, match="no tensor"):
        AdaptiveLasso(model, xi=1.0, reference={"0.weight": ref["0.weight"]})
    with pytest.raises(ValueError, match="shape"):
        AdaptiveLasso(model, xi=1.0, reference={**ref, "3.weight": ref["3.weight"].t()})
    other = _net()
    pen.refresh_(other)
    torch.testing.assert_close(pen.coef, _flat([1.0 / (w.detach().abs() + 1e-6) for w in _weights(other)]))


def test_adaptive_lasso_coefficients_survive_state_dict_roundtrip() -> None:
    model = _net()
    pen = AdaptiveLasso(model, xi=1e-3, gamma=2.0)
    sd = pen.state_dict()
    assert "coef" in sd
    fresh = AdaptiveLasso(_net(), xi=1e-3, gamma=2.0)
    assert not torch.equal(fresh.coef, pen.coef)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.coef, pen.coef)
    with pytest.raises(Exception, match=r"different|size mismatch"):
        AdaptiveLasso(build_model("lenet-300-100"), xi=1e-3).load_state_dict(sd)


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make",
    [
        lambda m: SharedHALO(m, xi=-1.0, psi=1.0),
        lambda m: SharedHALO(m, xi=1.0, psi=-1.0),
        lambda m: SharedHALO(m, xi=1.0, psi=1.0, lambda_min=0.0),
        lambda m: SharedHALO(m, xi=1.0, psi=1.0, lambda_init=1e-4, lambda_min=1e-3),
        lambda m: LayerHALO(m, xi=1.0, psi=1.0, p=-1.0),
        lambda m: LayerHALO(m, xi=1.0, psi=1.0, form="l3"),
        lambda m: LayerHALO(m, xi=1.0, psi=1.0, lambda_min=-1.0),
        lambda m: MCP(m, xi=-1.0, psi=2.0),
        lambda m: MCP(m, xi=1.0, psi=0.0),
        lambda m: MCP(m, xi=1.0, psi=-2.0),
        lambda m: SCAD(m, xi=-1.0),
        lambda m: SCAD(m, xi=1.0, a=2.0),
        lambda m: GroupLasso(m, xi=-1.0),
        lambda m: AdaptiveLasso(m, xi=-1.0),
        lambda m: AdaptiveLasso(m, xi=1.0, gamma=0.0),
        lambda m: AdaptiveLasso(m, xi=1.0, eps=0.0),
    ],
)
def test_invalid_arguments_are_rejected(make) -> None:
    with pytest.raises(ValueError):
        make(_net())


# ----------------------------------------------------------------------------------- registry contract


@pytest.mark.parametrize("name", PENALTIES.names())
def test_every_registered_penalty_builds_from_config_and_roundtrips(name: str) -> None:
    own = valid_keywords(PENALTIES[name])
    given = {k: v for k, v in {"xi": 1e-3, "psi": 2.0}.items() if k in own}
    kwargs = PenaltyConfig(name=name, **given).kwargs()
    model = _net()
    pen = build_penalty(name, model, **kwargs)
    assert isinstance(pen, nn.Module) and repr(pen)
    if not pen.in_loss:
        pen.attach(torch.optim.SGD([*model.parameters(), *pen.parameters()], lr=0.1))
    value = pen()
    assert isinstance(value, torch.Tensor) and value.ndim == 0 and torch.isfinite(value)
    if pen.in_loss:
        assert value.requires_grad
        value.backward()
        assert all(torch.isfinite(w.grad).all() for w in pen.weights())
    assert all(math.isfinite(v) for v in pen.stats().values())

    with torch.no_grad():  # make the state distinguishable from a fresh instance's
        for t in [*pen.parameters(), *pen.buffers()]:
            if t.is_floating_point():
                t.uniform_(0.5, 1.5)
    sd = pen.state_dict()
    fresh_model = _net()
    fresh = build_penalty(name, fresh_model, **kwargs)
    fresh.load_state_dict(sd)
    sd2 = fresh.state_dict()
    assert sd2.keys() == sd.keys()
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(sd2[k], v), k
        else:
            assert sd2[k] == v, k
    fresh_model.load_state_dict(model.state_dict())
    if not fresh.in_loss:
        fresh.attach(torch.optim.SGD([*fresh_model.parameters(), *fresh.parameters()], lr=0.1))
    torch.testing.assert_close(fresh().detach(), pen().detach())
