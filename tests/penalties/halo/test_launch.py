"""The fused step's kernels called directly (the compiled code entered without per-step guards): the same
result as the guarded ``torch.compile`` path, and the guarded path wherever the direct one's assumptions
fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from haloprune import HALO
from haloprune.penalties.halo import launch


@pytest.fixture(autouse=True)
def _fresh_dynamo_cache() -> None:
    """dynamo compiles a function for at most 8 structures per process (then runs it eagerly): earlier
    tests' kernels must not use up this module's."""
    torch._dynamo.reset()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(opt_name: str, steps: int = 4, transpose_grad: bool = False) -> tuple[nn.Module, HALO]:
    """A few fused HALO steps; ``transpose_grad``: from the third step on, the first weight's gradient
    handed over with other strides (the same values, laid out transposed)."""
    model = _model()
    halo = HALO(model, xi=1e-3, psi=1e-3)
    groups = [{"params": model.parameters()}, {"params": halo.parameters()}]
    if opt_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(groups, lr=1e-2, weight_decay=1e-2)
    halo.attach(opt)
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if transpose_grad and i >= 2:
            w = model[0].weight
            w.grad = w.grad.t().contiguous().t()  # same values, strides (1, 16)
            assert w.grad.stride() != w.stride()
        opt.step()
    return model, halo


def _same(a: tuple[nn.Module, HALO], b: tuple[nn.Module, HALO]) -> None:
    for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    torch.testing.assert_close(a[1].lam, b[1].lam, rtol=0, atol=0)


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_direct_call_equals_the_guarded_path(opt_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    direct = _train(opt_name)
    plan = direct[1].update.plan
    assert plan is not None and len(plan.launches.calls) == 1
    assert all(fn is not None for _, fn in plan.launches.calls.values()), "the direct path was not taken"
    with monkeypatch.context() as m:
        m.setattr(launch, "_direct", lambda *_: None)  # guarded torch.compile only
        guarded = _train(opt_name)
    _same(direct, guarded)
    monkeypatch.setenv("HALOPRUNE_COMPILE", "0")
    eager = _train(opt_name)
    for p, q in zip(direct[0].parameters(), eager[0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_gradient_with_other_strides_takes_the_guarded_path() -> None:
    """A gradient laid out unlike its weight: the direct call (compiled for the weight's strides) would
    read it wrong; the guarded path recompiles for it, and the result equals the contiguous run's."""
    _same(_train("adamw", transpose_grad=True), _train("adamw"))


def test_the_direct_call_is_the_compiled_code_itself() -> None:
    """No second compile: the direct call runs the code dynamo compiled for the plan's first call."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    from haloprune.penalties.halo.adam import halo_adam_step

    _, halo = _train("adamw")
    plan = halo.update.plan
    assert plan is not None
    (fn,) = [fn for _, fn in plan.launches.calls.values()]
    assert fn is not None
    assert fn.__code__ in [e.code for e in _debug_get_cache_entry_list(halo_adam_step.__code__)]


def test_replaced_optimizer_state_gets_its_own_direct_call() -> None:
    """A moment buffer replaced between steps (as code that resets the optimizer state does): the call is
    keyed on the tensors themselves, so the new buffer is the one stepped, never the old one."""
    model = _model()
    halo = HALO(model, xi=1e-3, psi=1e-3)
    opt = torch.optim.AdamW([{"params": model.parameters()}, {"params": halo.parameters()}], lr=1e-2)
    halo.attach(opt)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    w = model[0].weight
    old = opt.state[w]["exp_avg"]
    new = opt.state[w]["exp_avg"] = torch.zeros_like(old)
    before = old.clone()
    step()
    plan = halo.update.plan
    assert plan is not None and len(plan.launches.calls) == 2
    assert torch.equal(old, before) and new.abs().sum() > 0
    for _ in range(6):  # state replaced again and again: only the last few calls (and tensors) are kept
        opt.state[w]["exp_avg"] = torch.zeros_like(old)
        step()
    assert len(plan.launches.calls) == launch._KEPT
    assert not any(t is old for refs, _ in plan.launches.calls.values() for t in refs)


def test_an_attached_penalty_pickles_without_its_direct_calls() -> None:
    """``torch.save`` of a whole attached HALO (and a deep copy): the direct calls are this process's
    compiled code and cannot be pickled, so they are left out and made again on first use; the copy's
    state is the original's."""
    import copy
    import io

    _, halo = _train("adamw", steps=3)
    assert copy.deepcopy(halo).update.plan.launches.calls == {}
    assert halo.update.plan is not None and halo.update.plan.launches.calls  # there is something to drop
    buffer = io.BytesIO()
    torch.save(halo, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.update.plan.launches.calls == {}
    mine, theirs = halo.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in mine.items() if isinstance(v, torch.Tensor))
