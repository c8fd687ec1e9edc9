"""The adaptive lasso (haloprune.penalties.adaptive): coefficients fixed at construction, validation,
state_dict round trip."""

from __future__ import annotations

import pytest
import torch

from haloprune import build_model
from haloprune.penalties import (
    AdaptiveLasso,
)
from tests.helpers import CONV_NET_WEIGHTS, conv_net, conv_net_weights, flat, leaves


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_adaptive_lasso_uses_construction_time_weights(gamma: float) -> None:
    model = conv_net()
    ws = conv_net_weights(model)
    w_hat = [w.detach().clone() for w in ws]
    pen = AdaptiveLasso(model, xi=0.3, gamma=gamma)
    assert pen.coef.dtype == torch.float64 and list(pen.parameters()) == []
    with torch.no_grad():  # the second fit moves the weights; the coefficients stay
        for w in ws:
            w.add_(0.1 * torch.randn_like(w))
    value = pen()
    value.backward()

    ws2 = leaves(ws)
    coefs = [1.0 / (wh.abs() + 1e-3) ** gamma for wh in w_hat]
    expected = 0.3 * sum((c * w.abs()).sum() for c, w in zip(coefs, ws2, strict=True))
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    for w, w2, c in zip(ws, ws2, coefs, strict=True):
        torch.testing.assert_close(w.grad, w2.grad, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(w.grad, 0.3 * c * torch.sign(w.detach()), rtol=1e-12, atol=1e-15)
    for name, c in zip(CONV_NET_WEIGHTS, coefs, strict=True):
        torch.testing.assert_close(pen.coefficients()[name], c, rtol=1e-12, atol=0)

    pen.refresh_()  # now from the current weights
    torch.testing.assert_close(pen.coef, flat([1.0 / (w.detach().abs() + 1e-3) ** gamma for w in ws]))


def test_adaptive_lasso_reference_dict_and_validation() -> None:
    model = conv_net()
    ref = {n: 2.0 * t for n, t in model.state_dict().items()}  # extra entries (biases) are ignored
    pen = AdaptiveLasso(model, xi=1.0, reference=ref, eps=1e-6)
    torch.testing.assert_close(pen.coef, flat([1.0 / (ref[n].abs() + 1e-6) for n in CONV_NET_WEIGHTS]))
    with pytest.raises(ValueError, match="no tensor"):
        AdaptiveLasso(model, xi=1.0, reference={"0.weight": ref["0.weight"]})
    with pytest.raises(ValueError, match="shape"):
        AdaptiveLasso(model, xi=1.0, reference={**ref, "3.weight": ref["3.weight"].t()})
    other = conv_net()
    pen.refresh_(other)
    torch.testing.assert_close(
        pen.coef, flat([1.0 / (w.detach().abs() + 1e-6) for w in conv_net_weights(other)])
    )


def test_adaptive_lasso_coefficients_survive_state_dict_roundtrip() -> None:
    model = conv_net()
    pen = AdaptiveLasso(model, xi=1e-3, gamma=2.0)
    sd = pen.state_dict()
    assert "coef" in sd
    fresh = AdaptiveLasso(conv_net(), xi=1e-3, gamma=2.0)
    assert not torch.equal(fresh.coef, pen.coef)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.coef, pen.coef)
    with pytest.raises(Exception, match=r"different|size mismatch"):
        AdaptiveLasso(build_model("lenet-300-100"), xi=1e-3).load_state_dict(sd)
