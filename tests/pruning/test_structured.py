"""Group pruning (haloprune.pruning.structured): whole neurons/filters to a parameter or FLOPs budget, masks
that survive, impossible budgets refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import haloprune
from haloprune import build_model
from haloprune.pruning import Cost, count_cost, group_prune, group_scores
from haloprune.pruning.masks import get_masks, load_state_dict, masked_state_dict
from haloprune.pruning.slim import slim
from haloprune.pruning.structured import _attach_group_masks

pytestmark = pytest.mark.usefixtures("one_thread")


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
    load_state_dict(fresh, masked_state_dict(model))
    exported = haloprune.load(
        haloprune.save_sparse(model, tmp_path / "m.safetensors", architecture={"name": "lenet-5"})
    )
    for m in (twin, fresh, exported):
        assert get_masks(m).keys() == get_masks(model).keys()
        for n, mask in get_masks(model).items():
            assert torch.equal(get_masks(m)[n], mask)
    # a plain state dict: masks from the zeros, which are the pruned units' weights (the all-True mask of
    # the output layer, which keeps its units, is not needed to hold anything)
    plain = build_model("lenet-5")
    load_state_dict(plain, model.state_dict())
    for n, mask in get_masks(model).items():
        assert torch.equal(get_masks(plain).get(n, torch.ones_like(mask)), mask)


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
