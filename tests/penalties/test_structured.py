"""The group-halo penalty (haloprune.penalties.structured): value and gradients against a float64 hand
computation, λ's floor, registry, invalid arguments."""

from __future__ import annotations

import math

import pytest
import torch

from haloprune import build_model
from haloprune.config import PenaltyConfig
from haloprune.penalties import PENALTIES, GroupHALO, build_penalty
from tests.helpers import conv_net

pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_group_halo(model, lam, xi, psi, p, form, include_bias):
    """(value, {param: grad}, grad λ) in float64 Python arithmetic, one output unit at a time."""
    value, grads, g_lam, k = 0.0, {}, [], 0
    for idx in (0, 3, 5):
        layer = model[idx]
        w, b = layer.weight.detach(), layer.bias.detach()
        gw, gb = torch.zeros_like(w), torch.zeros_like(b)
        for o in range(w.shape[0]):
            g = [*w[o].flatten().tolist(), *([b[o].item()] if include_bias else [])]
            norm = math.sqrt(math.fsum(x * x for x in g))
            lk = max(lam[k], 1e-3)
            value += xi * norm / lk**2
            if norm > 0:
                gw[o] = xi * w[o] / norm / lk**2
                gb[o] = xi * b[o] / norm / lk**2
            g_lam.append(-2.0 * xi * norm / lk**3)
            k += 1
        grads[f"{idx}.weight"] = gw
        if include_bias:
            grads[f"{idx}.bias"] = gb
    d = math.fsum(abs(v) for v in lam) - p
    value += psi * (d * d if form == "l2" else abs(d))
    dterm = psi * (2 * d if form == "l2" else math.copysign(1.0, d))
    g_lam = [g + dterm * math.copysign(1.0, v) for g, v in zip(g_lam, lam, strict=True)]
    return value, grads, g_lam


@pytest.mark.parametrize(("form", "p"), [("l1", 0.0), ("l1", 20.0), ("l2", 3.0)])
@pytest.mark.parametrize("include_bias", [False, True])
def test_group_halo_value_and_gradients_match_hand_computation(
    form: str, p: float, include_bias: bool
) -> None:
    model = conv_net()
    with torch.no_grad():  # an all-zero group in a Linear and in the Conv: finite zero gradient there
        model[3].weight[2].zero_()
        model[3].bias[2] = 0.0
        model[0].weight[1].zero_()
        model[0].bias[1] = 0.0
    pen = GroupHALO(model, xi=0.3, psi=0.02, p=p, form=form, include_bias=include_bias)
    assert pen.num_groups == 3 + 5 + 4 and pen.lam.dtype == torch.float64
    assert pen.lam.tolist() == [1.0] * 12
    lam = torch.linspace(0.2, 1.7, 12, dtype=torch.float64)
    with torch.no_grad():
        pen.lam.copy_(lam)
    value = pen()
    value.backward()
    expected, grads, g_lam = _hand_group_halo(model, lam.tolist(), 0.3, 0.02, p, form, include_bias)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    params = dict(model.named_parameters())
    assert set(grads) == set(pen.param_names)
    for name, g in grads.items():
        torch.testing.assert_close(params[name].grad, g, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(pen.lam.grad, torch.tensor(g_lam, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    assert model[3].weight.grad[2].abs().max().item() == 0.0
    assert pen.stats()["groups_zero_fraction"] == pytest.approx(2 / 12)
    assert set(pen.lambdas()) == {"0.weight", "3.weight", "5.weight"}
    assert [t.numel() for t in pen.lambdas().values()] == [3, 5, 4]


def test_group_halo_lambda_floor_and_projection() -> None:
    model = conv_net()
    pen = GroupHALO(model, xi=1.0, psi=1.0, lambda_min=1e-2)
    opt = torch.optim.SGD([*model.parameters(), *pen.parameters()], lr=10.0)
    pen.attach(opt)
    with torch.no_grad():
        pen.lam.fill_(-5.0)  # below the floor: forward reads max(λ, λ_min), stays finite
    assert torch.isfinite(pen())
    for _ in range(3):  # adversarial steps: λ is pushed down hard, the hook puts it back
        opt.zero_grad()
        (-pen()).backward()
        opt.step()
        assert pen.lam.min().item() >= 1e-2
        assert torch.isfinite(pen())


def test_group_halo_is_registered_and_built_from_config() -> None:
    assert "group-halo" in PENALTIES
    model = build_model("lenet-5")
    kwargs = PenaltyConfig(name="group-halo", xi=1e-4, psi=1e-3, scope="conv").kwargs()
    pen = build_penalty("group-halo", model, **kwargs)
    assert pen.param_names == ["conv1.weight", "conv2.weight"] and pen.num_groups == 6 + 16
    other = build_penalty("group-halo", build_model("lenet-300-100"), xi=1e-4, psi=1e-3)
    with pytest.raises(ValueError, match="different penalised"):
        other.load_state_dict(pen.state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [{"xi": -1.0, "psi": 1.0}, {"xi": 1.0, "psi": 1.0, "p": -1.0}, {"xi": 1.0, "psi": 1.0, "form": "l3"}],
)
def test_group_halo_rejects_invalid_arguments(kwargs) -> None:
    with pytest.raises(ValueError):
        GroupHALO(conv_net(), **kwargs)
