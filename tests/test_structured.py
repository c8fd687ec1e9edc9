"""Structured sparsity: the group-halo penalty (value and gradients against a float64 hand computation,
λ's floor, registry) and group pruning (whole neurons/filters, to a parameter or FLOPs target)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import haloprune
from haloprune import build_model
from haloprune.config import PenaltyConfig
from haloprune.penalties import PENALTIES, GroupHALO, build_penalty
from haloprune.pruning import Cost, count_cost, group_prune, group_scores
from haloprune.pruning.masks import get_masks, load_state_dict
from haloprune.pruning.slim import slim
from haloprune.pruning.structured import _attach_group_masks

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 4)
    ).double()


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
    model = _net()
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
    model = _net()
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
        GroupHALO(_net(), **kwargs)


# ------------------------------------------------------------------------------------- group pruning


def _lenet300() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet-300-100").eval()


def _slim_cost(model: nn.Module) -> Cost:
    x = torch.zeros(1, 1, 28, 28)
    return count_cost(slim(model, x), x, nonzero_only=False)


def test_group_prune_hits_the_smallest_pruning_within_a_parameter_budget() -> None:
    model = _lenet300()
    x = torch.zeros(1, 1, 28, 28)
    budget = 60_000
    masks = group_prune(model, x, params=budget)
    assert set(masks) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for m in masks.values():  # whole rows: every output unit is all kept or all pruned
        assert ((m.all(1)) | (~m.any(1))).all()
    assert masks["fc3.weight"].all()  # the classifier's outputs are never pruned
    cost = _slim_cost(model)
    assert cost.params <= budget
    # pruning one unit fewer (keeping the best-scoring pruned unit) would not fit
    fresh = _lenet300()
    groups, original = group_scores(fresh)
    keep = torch.cat([m.any(1) for m in masks.values()])
    pruned = torch.nonzero(~keep).flatten()
    keep[pruned[torch.cat(original)[pruned].argmax()]] = True
    trial = copy.deepcopy(fresh)
    _attach_group_masks(trial, groups, list(keep.split(groups.counts)))
    assert _slim_cost(trial).params > budget


def test_group_prune_to_a_flops_budget_and_masks_survive_state_dict_deepcopy_and_export(
    tmp_path: Path,
) -> None:
    model = build_model("lenet-5").eval()
    x = torch.zeros(1, 1, 28, 28)
    dense = count_cost(model, x, nonzero_only=False)
    group_prune(model, x, macs=dense.macs // 10)
    assert _slim_cost(model).macs <= dense.macs // 10
    twin = copy.deepcopy(model)
    fresh = build_model("lenet-5")
    load_state_dict(fresh, model.state_dict())
    exported = haloprune.load(
        haloprune.save_sparse(model, tmp_path / "m.safetensors", architecture={"name": "lenet-5"})
    )
    for m in (twin, fresh, exported):
        assert get_masks(m).keys() == get_masks(model).keys()
        for n, mask in get_masks(model).items():
            assert torch.equal(get_masks(m)[n], mask)


def test_group_scores_normalise_by_size_or_layer() -> None:
    model = _lenet300()
    with torch.no_grad():
        model.fc1.weight.fill_(0.01)  # rows of 784: L2 norm 0.28, RMS 0.01
        model.fc2.weight.fill_(0.02)  # rows of 300: L2 norm 0.35, RMS 0.02
    groups, rms = group_scores(model)
    assert groups.counts == [300, 100, 10] and groups.sizes == [784, 300, 100]
    torch.testing.assert_close(rms[0], torch.full((300,), 0.01))
    torch.testing.assert_close(rms[1], torch.full((100,), 0.02))
    _, l2 = group_scores(model, normalize="l2")
    torch.testing.assert_close(l2[0], torch.full((300,), 0.01 * 784**0.5))
    _, layer = group_scores(model, normalize="layer")
    torch.testing.assert_close(layer[1], torch.ones(100))
    with pytest.raises(ValueError, match="normalize"):
        group_scores(model, normalize="max")  # type: ignore[arg-type]


def test_group_prune_with_bias_masks_the_bias_and_keeps_a_unit_per_layer() -> None:
    model = _lenet300()
    x = torch.zeros(1, 1, 28, 28)
    group_prune(model, x, params=784 + 1 + 10, include_bias=True, keep_output_layer=False)
    masks = get_masks(model)
    assert "fc1.bias" in masks
    assert torch.equal(masks["fc1.bias"], masks["fc1.weight"].any(1))
    # 784·1 + 1·1 + 1·10: one unit left in fc1 and fc2; fc3's rows are the outputs, slim keeps them anyway
    assert [int(m.any(1).sum()) for n, m in masks.items() if n.endswith("weight")] == [1, 1, 10]


def test_group_prune_rejects_impossible_or_missing_budgets() -> None:
    model = _lenet300()
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ValueError, match="budget"):
        group_prune(model, x)
    with pytest.raises(ValueError, match="no group pruning reaches"):
        group_prune(model, x, params=100)  # the 10-output classifier alone needs more
    assert not get_masks(model)  # nothing was pruned
