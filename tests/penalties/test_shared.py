"""Shared-λ HALO (sws) and layer-wise HALO (haloprune.penalties.shared): value and gradients against float64
hand computations, λ's floor under adversarial steps."""

from __future__ import annotations

import pytest
import torch

from haloprune import build_model
from haloprune.penalties import (
    LayerHALO,
    SharedHALO,
)
from tests.helpers import CONV_NET_WEIGHTS, conv_net, conv_net_weights, flat, leaves


def _hand_layer_halo(ws, lams, xi, psi, p, form):
    shrink = sum(w.abs().sum() / lam**2 for w, lam in zip(ws, lams, strict=True))
    budget = sum(lam.abs() for lam in lams) - p
    return xi * shrink + psi * (budget**2 if form == "l2" else budget.abs())


def test_sws_value_and_gradients_match_hand_computation() -> None:
    model = conv_net()
    pen = SharedHALO(model, xi=0.3, psi=0.02, lambda_init=0.7)
    assert pen.lam.shape == () and pen.lam.dtype == torch.float64 and pen.lam.item() == 0.7
    with torch.no_grad():
        pen.lam.fill_(0.6)
    ws = conv_net_weights(model)
    value = pen()
    value.backward()

    ws2 = leaves(ws)
    lam2 = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    expected = 0.3 * sum(w.abs().sum() for w in ws2) / lam2**2 + 0.02 * lam2**2
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    for w, w2 in zip(ws, ws2, strict=True):
        torch.testing.assert_close(w.grad, w2.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pen.lam.grad, lam2.grad, rtol=1e-12, atol=1e-15)

    # Closed forms: dw = ξ sign(w)/λ², dλ = -2ξ Σ|w|/λ³ + 2ψλ.
    w = flat([w.detach() for w in ws])
    torch.testing.assert_close(flat([w.grad for w in ws]), 0.3 * torch.sign(w) / 0.6**2)
    torch.testing.assert_close(pen.lam.grad.item(), -2 * 0.3 * w.abs().sum().item() / 0.6**3 + 2 * 0.02 * 0.6)
    assert pen.stats() == {"lambda": pytest.approx(0.6)}
    assert list(pen.parameters()) == [pen.lam]


@pytest.mark.parametrize("form", ["l1", "l2"])
@pytest.mark.parametrize("p", [0.0, 50.0])
def test_layer_halo_value_and_gradients_match_hand_computation(form: str, p: float) -> None:
    model = conv_net()
    pen = LayerHALO(model, xi=0.3, psi=0.02, p=p, form=form)
    assert pen.lam.shape == (3,) and set(pen.lambdas()) == set(CONV_NET_WEIGHTS)
    with torch.no_grad():
        pen.lam.uniform_(0.2, 2.0)
    ws = conv_net_weights(model)
    value = pen()
    value.backward()

    ws2 = leaves(ws)
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
    assert all(f"lambda/{n}" in stats for n in CONV_NET_WEIGHTS)


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
    model = conv_net()
    pen = cls(model, xi=1.0, psi=1.0, lambda_min=1e-3)
    with torch.no_grad():
        pen.lam.fill_(-5.0 if cls is SharedHALO else 0.0)
    value = pen()
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(pen.lam.grad).all()
    pen.project_()
    assert pen.lam.min().item() == 1e-3
