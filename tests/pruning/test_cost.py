"""Counting weights and MACs (haloprune.pruning.cost)."""

from __future__ import annotations

import copy

import pytest
import torch

from haloprune import build_model, global_magnitude_prune
from haloprune.pruning import count_cost

pytestmark = pytest.mark.usefixtures("one_thread")


def test_count_cost_counts_weights_and_macs() -> None:
    model = build_model("lenet-5")
    x = torch.zeros(2, 1, 28, 28)
    dense = count_cost(model, x, nonzero_only=False)
    # conv1 6x1x5x5 at 28x28, conv2 16x6x5x5 at 10x10, fc 400x120, 120x84, 84x10
    conv = 150 * 28 * 28 + 2400 * 10 * 10
    fc = 400 * 120 + 120 * 84 + 84 * 10
    assert dense.params == 150 + 2400 + fc and dense.macs == conv + fc
    pruned = copy.deepcopy(model)
    global_magnitude_prune(pruned, 0.9)
    sparse = count_cost(pruned, x)
    assert sparse.params == round(0.1 * dense.params) and sparse.macs < dense.macs
    assert count_cost(pruned, x, nonzero_only=False) == dense
