"""L1 (haloprune.penalties.l1): value and gradient."""

from __future__ import annotations

import torch

from haloprune import L1
from tests.helpers import conv_linear


def test_l1_value_and_gradient() -> None:
    model = conv_linear()
    pen = L1(model, xi=0.5)
    val = pen()
    val.backward()
    expected = 0.5 * (model[0].weight.abs().sum() + model[3].weight.abs().sum())
    torch.testing.assert_close(val, expected)
    torch.testing.assert_close(model[3].weight.grad, 0.5 * torch.sign(model[3].weight.detach()))
    assert list(pen.parameters()) == []
