"""The contract every registered penalty keeps (haloprune.penalties.base): built from the registry and from
PenaltyConfig, strict keyword arguments, invalid values refused, finite scalar, state_dict round trip."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from haloprune import HALO as FusedHALO
from haloprune import L1, build_model
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
from tests.helpers import conv_net, mlp

HALO = functools.partial(FusedHALO, fused=False)


def test_a_typo_in_a_penalty_keyword_is_a_type_error_naming_the_valid_ones() -> None:
    model = mlp()
    with pytest.raises(TypeError, match=r"'lamda_min' \(did you mean 'lambda_min'\?\); valid: .*xi"):
        HALO(model, xi=1e-3, psi=1e-2, lamda_min=1e-4)
    with pytest.raises(TypeError, match="'psi'"):
        L1(model, xi=1e-3, psi=1.0)


def test_registry_builds_every_penalty_with_the_shared_interface() -> None:
    model = build_model("lenet-300-100")
    for name in PENALTIES:
        own = valid_keywords(PENALTIES[name])
        pen = build_penalty(name, model, **{k: v for k, v in {"xi": 1e-6, "psi": 1e-3}.items() if k in own})
        pen.attach(torch.optim.SGD([*model.parameters(), *pen.parameters()], lr=0.1, momentum=0.9))
        value = pen()
        assert value.ndim == 0 and torch.isfinite(value)
        assert value.requires_grad == pen.in_loss
    with pytest.raises(Exception, match="unknown penalty"):
        build_penalty("nope", model)


def test_invalid_arguments_are_rejected() -> None:
    model = build_model("lenet-300-100")
    with pytest.raises(ValueError):
        HALO(model, xi=-1.0, psi=1e-3)
    with pytest.raises(ValueError):
        HALO(model, xi=1e-6, psi=1e-3, form="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HALO(model, xi=1e-6, psi=1e-3, lambda_min=0.0)


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
def test_every_family_rejects_invalid_arguments(make) -> None:
    with pytest.raises(ValueError):
        make(conv_net())


@pytest.mark.parametrize("name", PENALTIES.names())
def test_every_registered_penalty_builds_from_config_and_roundtrips(name: str) -> None:
    own = valid_keywords(PENALTIES[name])
    given = {k: v for k, v in {"xi": 1e-3, "psi": 2.0}.items() if k in own}
    kwargs = PenaltyConfig(name=name, **given).kwargs()
    model = conv_net()
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
    fresh_model = conv_net()
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
