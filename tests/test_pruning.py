"""Magnitude pruning: exact sparsity, deterministic ties, masks that survive everything."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from haloprune import (
    build_model,
    global_magnitude_prune,
    keep_masked,
    layerwise_magnitude_prune,
    load_state_dict,
    sparsity_report,
)
from haloprune.pruning import format_sparsity_report, masks_from_scores, recalibrate_batchnorm
from haloprune.pruning.masks import apply_masks_, get_masks, remove_masks, without_masks


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


def _pruned() -> nn.Module:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.9)
    return model


def test_masks_survive_state_dict_into_a_fresh_model() -> None:
    model = _pruned()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = build_model("lenet-300-100")
    load_state_dict(fresh, torch.load(buf, weights_only=True))
    assert set(get_masks(fresh)) == set(get_masks(model))
    for name, mask in get_masks(model).items():
        assert torch.equal(get_masks(fresh)[name], mask)
        assert torch.equal(fresh.get_parameter(name), model.get_parameter(name))


def test_masks_survive_deepcopy_and_pickle() -> None:
    model = _pruned()
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert set(get_masks(twin)) == {"fc1.weight", "fc2.weight", "fc3.weight"}
        x = torch.randn(4, 1, 28, 28)
        torch.testing.assert_close(twin(x), model(x))


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    for _ in range(steps):
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_pruned_weights_stay_zero_while_training_continues() -> None:
    model = _pruned()
    zeros_before = {n: ~m for n, m in get_masks(model).items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    keep_masked(opt, model)
    _train_steps(model, opt)
    for name, pruned in zeros_before.items():
        assert (model.get_parameter(name)[pruned] == 0).all()


def test_masked_model_compiles_and_trains() -> None:
    model = _pruned()
    compiled = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    keep_masked(opt, model)
    _train_steps(compiled, opt, steps=3)
    for name, mask in get_masks(model).items():
        assert (model.get_parameter(name)[~mask] == 0).all()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(compiled(x), model(x))


def test_remove_masks_and_reapply() -> None:
    model = _pruned()
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    apply_masks_(model)
    assert sparsity_report(model)[0].sparsity == pytest.approx(
        1 - get_masks(model)["fc1.weight"].float().mean().item()
    )
    remove_masks(model)
    assert get_masks(model) == {}
    assert not any(k.endswith("_mask") for k in model.state_dict())


def test_sparsity_report_rows_and_table() -> None:
    model = _pruned()
    rows = sparsity_report(model)
    assert [r.name for r in rows] == ["fc1.weight", "fc2.weight", "fc3.weight", "total"]
    assert rows[-1].params == 784 * 300 + 300 * 100 + 100 * 10
    assert rows[-1].sparsity == pytest.approx(0.9, abs=1e-6)
    table = format_sparsity_report(rows)
    assert "fc1.weight" in table and "90.00%" in table


def test_batchnorm_recalibration_matches_the_pruned_networks_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(3)
    )
    x = torch.randn(64, 1, 6, 6)
    model(x)  # materialise the lazy layer
    model.train()
    for _ in range(3):  # dense statistics
        model(torch.randn(32, 1, 6, 6) * 3 + 1)
    model.eval()
    global_magnitude_prune(model, 0.7)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}

    conv_out = model[0](x).detach()  # the pruned convolution's outputs on every image
    bn = model[1]
    assert recalibrate_batchnorm(model, x, images=64, batch_size=16) == 1  # an exact average of 4 batches
    torch.testing.assert_close(bn.running_mean, conv_out.mean(dim=(0, 2, 3)))
    assert recalibrate_batchnorm(model, x, images=64, batch_size=64) == 1
    torch.testing.assert_close(bn.running_var, conv_out.transpose(0, 1).flatten(1).var(dim=1))
    assert bn.momentum == 0.1 and not model.training and not model[3].training  # all restored
    after = {k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(after[k], weights[k]) for k in after)  # weights and masks untouched

    plain = build_model("lenet-300-100")
    before = copy.deepcopy(plain.state_dict())
    assert recalibrate_batchnorm(plain, torch.randn(8, 1, 28, 28)) == 0  # no BatchNorm: nothing to do
    assert recalibrate_batchnorm(model, x, images=0) == 0
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())


def test_without_masks_drops_exactly_the_mask_buffers() -> None:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.5)
    state = model.state_dict()
    kept = without_masks(state)
    assert set(state) - set(kept) == {f"{n}_mask" for n in get_masks(model)}
    assert all(kept[k] is state[k] for k in kept)


def test_batchnorm_recalibration_counts_sync_batchnorm() -> None:
    """Distributed training on CUDA turns a model's BatchNorm layers into SyncBatchNorm, in place."""
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    assert isinstance(model[1], nn.SyncBatchNorm)
    x = torch.randn(32, 1, 6, 6)
    assert recalibrate_batchnorm(model, x, images=32, batch_size=32) == 1
    torch.testing.assert_close(model[1].running_mean, model[0](x).detach().mean(dim=(0, 2, 3)))
