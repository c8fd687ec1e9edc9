"""Magnitude pruning (haloprune.pruning.magnitude): exact sparsity, the largest weights kept, deterministic
ties, layer-wise pruning, range checks."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from haloprune import (
    build_model,
    global_magnitude_prune,
    layerwise_magnitude_prune,
    sparsity_report,
)
from haloprune.pruning import masks_from_scores


def _zeros(model: nn.Module) -> int:
    return sum(int((m == 0).sum()) for m in (model.fc1.weight, model.fc2.weight, model.fc3.weight))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95, 0.98, 0.99, 0.999])
def test_global_prune_meets_sparsity_exactly(sparsity: float) -> None:
    model = build_model("lenet-300-100")
    masks = global_magnitude_prune(model, sparsity)
    n = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(sparsity * n)
    assert _zeros(model) == pruned
    assert sparsity_report(model)[-1].params == n


def test_global_prune_keeps_the_largest_weights() -> None:
    model = build_model("lenet-300-100")
    w = torch.cat([p.detach().abs().flatten() for n, p in model.named_parameters() if "weight" in n])
    global_magnitude_prune(model, 0.9)
    kept = torch.cat([p.detach().abs().flatten() for n, p in model.named_parameters() if "weight" in n])
    threshold = torch.sort(w).values[round(0.9 * w.numel())]
    assert (kept[kept > 0] >= threshold).all()


def test_layerwise_prune_is_exact_per_layer() -> None:
    model = build_model("lenet-5")
    masks = layerwise_magnitude_prune(model, 0.7)
    for mask in masks.values():
        assert int((~mask).sum()) == round(0.7 * mask.numel())


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    sparsity=st.floats(0.0, 0.999),
)
def test_ties_are_broken_by_position_deterministically(values: list[int], sparsity: float) -> None:
    scores = {"a": torch.tensor(values, dtype=torch.float32)}
    keep = masks_from_scores(scores, sparsity)["a"]
    n_prune = round(sparsity * len(values))
    assert int((~keep).sum()) == n_prune
    # Expected: sort by (value, index) and prune the first n_prune.
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    expected = torch.ones(len(values), dtype=torch.bool)
    expected[order[:n_prune]] = False
    assert torch.equal(keep, expected)
    assert torch.equal(keep, masks_from_scores(scores, sparsity)["a"])


def test_sparsity_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        global_magnitude_prune(build_model("lenet-300-100"), 1.0)
    with pytest.raises(ValueError):
        global_magnitude_prune(build_model("lenet-300-100"), -0.1)


def test_of_nonzero_prunes_a_fraction_of_the_weights_not_already_zero() -> None:
    """The HALO reference's pruning: with Z of N weights at zero, Z + round(s (N - Z)) end pruned;
    ``of="all"`` prunes round(s N) whatever is zero; per layer the same count holds in each tensor."""
    from haloprune.pruning import zero_small_weights

    torch.manual_seed(0)
    model = build_model("lenet-300-100")
    n = sum(p.numel() for p in (model.fc1.weight, model.fc2.weight, model.fc3.weight))
    with torch.no_grad():
        model.fc1.weight[:150] = 0.0  # 117,600 of 266,200 weights already zero
    z = _zeros(model)
    for of, expected in (("all", round(0.9 * n)), ("nonzero", z + round(0.9 * (n - z)))):
        pruned = copy.deepcopy(model)
        global_magnitude_prune(pruned, 0.9, of=of)
        assert _zeros(pruned) == expected
    layered = copy.deepcopy(model)
    layerwise_magnitude_prune(layered, 0.5, of="nonzero")
    fc1 = layered.fc1.weight
    assert int((fc1 == 0).sum()) == 150 * 784 + round(0.5 * 150 * 784)
    with pytest.raises(ValueError, match="of must be one of 'all', 'nonzero'"):
        global_magnitude_prune(copy.deepcopy(model), 0.5, of="nonzeros")

    small = copy.deepcopy(model)
    with torch.no_grad():
        small.fc2.weight[0, :10] = 1e-6
        small.fc2.bias[:3] = 1e-6  # biases are not prunable: left alone
    weights = (small.fc1.weight, small.fc2.weight, small.fc3.weight)
    expected = sum(int(((w.abs() < 1e-5) & (w != 0)).sum()) for w in weights)
    assert expected >= 10 and zero_small_weights(small, 1e-5) == expected
    assert (small.fc2.weight[0, :10] == 0).all() and (small.fc2.bias[:3] == 1e-6).all()
