"""The group lasso (haloprune.penalties.group): value and gradients against a float64 hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from haloprune.penalties import (
    GroupLasso,
)
from tests.helpers import conv_net


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
    model = conv_net()
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
    model = conv_net()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    pen = GroupLasso(model, xi=1.0, include_bias=True)
    value = pen()
    assert value.item() == 0.0
    value.backward()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max().item() == 0.0
