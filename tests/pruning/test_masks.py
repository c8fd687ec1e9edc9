"""Masks that hold (haloprune.pruning.masks): pruned weights stay exactly zero under any optimizer, through
state_dict, deepcopy, pickle, loading and torch.compile, with no call from the user."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import haloprune
from haloprune import (
    build_model,
    global_magnitude_prune,
    load_state_dict,
    sparsity_report,
)
from haloprune.pruning.masks import (
    apply_masks_,
    get_masks,
    masked_state_dict,
    remove_masks,
    without_masks,
)
from tests.helpers import batches, mlp, train_steps


def _pruned(seed: int = 0) -> nn.Module:
    model = mlp(seed=seed)
    global_magnitude_prune(model, 0.7)
    return model


def _zeros_hold(model: nn.Module, masks: dict[str, torch.Tensor]) -> bool:
    params = dict(model.named_parameters())
    return all(bool((params[n][~m] == 0).all()) for n, m in masks.items())


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.clone() for n, m in haloprune.pruning.masks.get_masks(model).items()}


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda ps: torch.optim.Adam(ps, lr=1e-2),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-2),
    ],
    ids=["sgd-momentum", "adam", "adamw-wd", "adamw-fused", "rmsprop"],
)
def test_pruned_weights_stay_zero_in_any_optimizer(make_opt) -> None:
    model = mlp()
    opt = make_opt(model.parameters())
    train_steps(model, opt)  # momentum / moments from before pruning
    global_magnitude_prune(model, 0.7)
    masks = _masks(model)
    train_steps(model, opt)
    assert _zeros_hold(model, masks)
    train_steps(model, make_opt(model.parameters()))  # an optimizer made after pruning
    assert _zeros_hold(model, masks)


@pytest.mark.parametrize("budget", [1 << 24, 100], ids=["factors", "uint8-beyond-budget"])
def test_mask_changed_in_place_or_replaced_is_the_one_enforced(
    budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook keeps each mask as a float factor between steps (within a budget of elements; beyond it
    the bool mask is read as uint8): a mask edited in place, a new mask, or a model cast to another
    dtype is enforced from the next step on, never the stale factor."""
    monkeypatch.setattr(haloprune.pruning.masks, "_FACTOR_BUDGET", budget)
    model = _pruned()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_steps(model, opt)
    assert _zeros_hold(model, _masks(model))
    mask = get_masks(model)["0.weight"]
    mask[:4] = False  # pruned further, in place
    train_steps(model, opt)
    assert bool((model[0].weight[:4] == 0).all()) and _zeros_hold(model, _masks(model))
    haloprune.pruning.masks.attach_mask(model, "2.weight", torch.rand_like(model[2].weight) > 0.5)
    train_steps(model, opt)
    assert _zeros_hold(model, _masks(model))
    model.double()  # the factor follows the parameter's dtype
    for x, y in batches(3, dtype=torch.float64):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert model[0].weight.dtype == torch.float64 and _zeros_hold(model, _masks(model))


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save", "load_state_dict"])
def test_masks_survive_copies_and_loading(how: str) -> None:
    model = _pruned()
    masks = _masks(model)
    if how == "deepcopy":
        other = copy.deepcopy(model)
    elif how in ("pickle", "torch.save"):
        buf = io.BytesIO()
        pickle.dump(model, buf) if how == "pickle" else torch.save(model, buf)
        buf.seek(0)
        other = pickle.load(buf) if how == "pickle" else torch.load(buf, weights_only=False)
    else:
        other = mlp(seed=5)
        haloprune.load_state_dict(other, model.state_dict())
    train_steps(other, torch.optim.AdamW(other.parameters(), lr=1e-2))
    assert _zeros_hold(other, masks)
    if how == "deepcopy":  # the original is still linked to its own masks, not the copy's
        train_steps(model, torch.optim.SGD(model.parameters(), lr=0.5))
        assert _zeros_hold(model, masks)


def test_masks_hold_under_torch_compile() -> None:
    model = _pruned()
    masks = _masks(model)
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.Adam(compiled.parameters(), lr=1e-2)
    for x, y in batches(4):
        opt.zero_grad()
        F.cross_entropy(compiled(x), y).backward()
        opt.step()
    assert _zeros_hold(model, masks)


def _pruned_pruning() -> nn.Module:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.9)
    return model


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    for _ in range(steps):
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_masks_survive_state_dict_into_a_fresh_model() -> None:
    model = _pruned_pruning()
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
    model = _pruned_pruning()
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert set(get_masks(twin)) == {"fc1.weight", "fc2.weight", "fc3.weight"}
        x = torch.randn(4, 1, 28, 28)
        torch.testing.assert_close(twin(x), model(x))


def test_pruned_weights_stay_zero_while_training_continues() -> None:
    model = _pruned_pruning()
    zeros_before = {n: ~m for n, m in get_masks(model).items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    _train_steps(model, opt)
    for name, pruned in zeros_before.items():
        assert (model.get_parameter(name)[pruned] == 0).all()


def test_masked_model_compiles_and_trains() -> None:
    model = _pruned_pruning()
    compiled = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(compiled, opt, steps=3)
    for name, mask in get_masks(model).items():
        assert (model.get_parameter(name)[~mask] == 0).all()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(compiled(x), model(x))


def test_remove_masks_and_reapply() -> None:
    model = _pruned_pruning()
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    apply_masks_(model)
    assert sparsity_report(model)[0].sparsity == pytest.approx(
        1 - get_masks(model)["fc1.weight"].float().mean().item()
    )
    remove_masks(model)
    assert get_masks(model) == {}
    assert not any(k.endswith("_mask") for k in model.state_dict())


def test_without_masks_drops_exactly_the_mask_buffers() -> None:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.5)
    state = masked_state_dict(model)
    kept = without_masks(state)
    assert set(state) - set(kept) == {f"{n}_mask" for n in get_masks(model)}
    assert all(kept[k] is state[k] for k in kept)
    assert set(kept) == set(model.state_dict())  # the plain state dict has no masks
