"""HALO (reference formulation): value and gradients against a float64 hand computation; λ stays in range;
state survives copies. The fused fast path is checked against this reference in test_fused.py."""

from __future__ import annotations

import copy
import functools
import io

import pytest
import torch
from torch import nn

from haloprune import HALO as FusedHALO
from haloprune import build_model
from tests.helpers import conv_linear

HALO = functools.partial(FusedHALO, fused=False)


def _hand_halo(ws, lams, xi, psi, p, form):
    shrink = sum((w.abs() / lam**2).sum() for w, lam in zip(ws, lams, strict=True))
    budget = sum(lam.abs().sum() for lam in lams) - p
    return xi * shrink + psi * (budget**2 if form == "l2" else budget.abs())


@pytest.mark.parametrize("form", ["l1", "l2"])
@pytest.mark.parametrize("p", [0.0, 50.0])
def test_halo_value_and_gradients_match_hand_computation(form: str, p: float) -> None:
    model = conv_linear()
    halo = HALO(model, xi=0.3, psi=0.02, p=p, form=form).double()
    with torch.no_grad():
        halo.lam.uniform_(0.2, 2.0)
    ws = [model[0].weight, model[3].weight]
    value = halo()
    value.backward()
    g_w = [w.grad.clone() for w in ws]
    g_lam = halo.lam.grad.clone()

    # Hand computation on independent float64 leaves.
    ws2 = [w.detach().clone().requires_grad_() for w in ws]
    lam_flat = halo.lam.detach().clone()
    lams2 = [
        c.view_as(w).clone().requires_grad_()
        for c, w in zip(lam_flat.split([w.numel() for w in ws]), ws, strict=True)
    ]
    expected = _hand_halo(ws2, lams2, 0.3, 0.02, p, form)
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    for a, b in zip(g_w, ws2, strict=True):
        torch.testing.assert_close(a, b.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        g_lam, torch.cat([lam.grad.flatten() for lam in lams2]), rtol=1e-12, atol=1e-15
    )

    # Closed forms (l1 form): dw = ξ sign(w)/λ², dλ = -2ξ|w|/λ³ + ψ sign(λ) sign(Σ|λ| - p).
    if form == "l1":
        lam = lam_flat
        w = torch.cat([w.detach().flatten() for w in ws])
        s = torch.sign(lam.abs().sum() - p)
        torch.testing.assert_close(torch.cat([g.flatten() for g in g_w]), 0.3 * torch.sign(w) / lam**2)
        torch.testing.assert_close(g_lam, -2 * 0.3 * w.abs() / lam**3 + 0.02 * torch.sign(lam) * s)


def test_halo_selects_weights_and_optionally_biases() -> None:
    model = build_model("lenet-5")
    assert HALO(model, 1e-6, 1e-3).num_penalized == sum(
        m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    )
    with_bias = HALO(model, 1e-6, 1e-3, include_bias=True)
    assert with_bias.num_penalized == sum(p.numel() for p in model.parameters())
    conv_only = HALO(model, 1e-6, 1e-3, scope="conv")
    assert conv_only.param_names == ["conv1.weight", "conv2.weight"]
    assert set(HALO(model, 1e-6, 1e-3).lambdas()) == {n for n, p in model.named_parameters() if "weight" in n}


@pytest.mark.parametrize("lr", [0.1, 10.0, 1e4])
def test_lambda_stays_positive_and_loss_finite_under_adversarial_steps(lr: float) -> None:
    """Large ψ, tiny ξ and huge steps: λ would step through zero; it must stay >= lambda_min."""
    model = build_model("lenet-300-100")
    halo = HALO(model, xi=1e-9, psi=1e-1, lambda_min=1e-3)
    opt = torch.optim.SGD([*model.parameters(), *halo.parameters()], lr=lr, momentum=0.9)
    halo.attach(opt)
    for _ in range(20):
        loss = halo()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert halo.lam.min().item() >= 1e-3
    assert torch.isfinite(halo())


def test_forward_is_finite_even_without_projection() -> None:
    model = build_model("lenet-300-100")
    halo = HALO(model, xi=1.0, psi=1.0, lambda_min=1e-3)
    with torch.no_grad():
        halo.lam.fill_(0.0)
        halo.lam[:10] = -5.0
    value = halo()
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(halo.lam.grad).all()


def test_halo_state_dict_roundtrip_deepcopy_and_pickle() -> None:
    model = build_model("lenet-300-100")
    halo = HALO(model, xi=1e-6, psi=1e-3)
    with torch.no_grad():
        halo.lam.uniform_(0.1, 1.0)
    fresh = HALO(build_model("lenet-300-100"), xi=1e-6, psi=1e-3)
    fresh.load_state_dict(halo.state_dict())
    assert torch.equal(fresh.lam, halo.lam)
    twin_model, twin_halo = copy.deepcopy((model, halo))
    assert twin_halo.weights()[0] is twin_model.fc1.weight  # the copy follows the copied model
    assert torch.equal(twin_halo(), halo())
    buf = io.BytesIO()
    torch.save((model, halo), buf)
    buf.seek(0)
    _, h2 = torch.load(buf, weights_only=False)
    assert torch.equal(h2(), halo())
    other = HALO(build_model("lenet-5"), xi=1e-6, psi=1e-3)
    with pytest.raises(Exception, match=r"different|size mismatch"):
        other.load_state_dict(halo.state_dict())


def test_penalty_reads_weights_through_torch_compile_wrapper() -> None:
    model = build_model("lenet-300-100")
    halo = HALO(model, xi=1e-6, psi=1e-3)
    compiled = torch.compile(model)
    torch.testing.assert_close(halo(compiled), halo())
