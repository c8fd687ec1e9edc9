"""HALO inside Adam/AdamW's step (haloprune.penalties.halo.adam): coupled equals autograd HALO + Adam in
float64, decoupled shrinks and gives exact zeros with prox, other optimizers refused in one line."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from haloprune import HALO
from haloprune.penalties.halo import adam as halo_adam
from tests.helpers import batches, mlp, train_steps


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_coupled_fused_adam_equals_adam_on_task_plus_halo_in_float64(opt_cls, weight_decay: float) -> None:
    ref_model, fused_model = mlp(torch.float64), mlp(torch.float64)
    ref = HALO(ref_model, xi=1e-3, psi=1e-2)
    ref_opt = opt_cls([*ref_model.parameters(), ref.lam], lr=1e-2, weight_decay=weight_decay)
    fast = HALO(fused_model, xi=1e-3, psi=1e-2, coupling="coupled")
    fast_opt = opt_cls(fused_model.parameters(), lr=1e-2, weight_decay=weight_decay)
    fast.attach(fast_opt)
    for x, y in batches(dtype=torch.float64):
        ref_opt.zero_grad()
        (F.cross_entropy(ref_model(x), y) + ref()).backward()
        ref_opt.step()
        fast_opt.zero_grad()
        F.cross_entropy(fused_model(x), y).backward()
        fast_opt.step()
    for a, b in zip(ref_model.parameters(), fused_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ref.lam, fast.lam, rtol=1e-10, atol=1e-12)
    assert fast().requires_grad is False


def test_default_coupling_with_adam_is_coupled_and_target_mode_decoupled() -> None:
    model = mlp()
    fixed = HALO(model, xi=1e-3, psi=1e-2)
    fixed.attach(torch.optim.AdamW(model.parameters()))
    target = HALO(model, target_sparsity=0.9)
    target.attach(torch.optim.AdamW(model.parameters()), total_steps=10)
    assert fixed.update.coupled and not target.update.coupled
    with pytest.raises(ValueError, match="decoupled"):
        HALO(model, target_sparsity=0.9, coupling="coupled").attach(torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="coupling applies to Adam"):
        HALO(model, xi=1e-3, psi=1e-2, coupling="coupled").attach(torch.optim.SGD(model.parameters(), lr=0.1))


def test_other_optimizer_is_refused_at_attach_with_one_line() -> None:
    model = mlp()
    with pytest.raises(TypeError, match="not RMSprop; with another optimizer do not attach") as err:
        HALO(model, xi=1e-3, psi=1e-2).attach(torch.optim.RMSprop(model.parameters()))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="amsgrad"):
        HALO(model, xi=1e-3, psi=1e-2).attach(torch.optim.Adam(model.parameters(), amsgrad=True))


@pytest.mark.parametrize("prox", [False, True])
def test_decoupled_adamw_shrinks_and_prox_gives_exact_zeros(prox: bool) -> None:
    model = mlp()
    halo = HALO(model, xi=0.05, psi=1.0, coupling="decoupled", prox=prox)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    halo.attach(opt)
    for _ in range(20):
        for x, y in batches():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    zeros = sum(int((w == 0).sum()) for w in halo.weights()) / halo.num_penalized
    assert (zeros > 0.3) if prox else (zeros == 0.0)
    assert float(halo.lam.detach().min()) >= halo.lambda_min and torch.isfinite(halo()).item()


@pytest.mark.parametrize("coupling", ["coupled", "decoupled"])
def test_compiled_adam_kernel_equals_the_eager_one(monkeypatch: pytest.MonkeyPatch, coupling: str) -> None:
    results = []
    for compile_ in ("0", "1"):
        monkeypatch.setenv("HALOPRUNE_COMPILE", compile_)
        model = mlp()
        halo = HALO(model, xi=1e-3, psi=1e-2, coupling=coupling)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        halo.attach(opt)
        train_steps(model, opt, steps=4)
        results.append([p.detach().clone() for p in [*model.parameters(), halo.lam]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _edit(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, keep: list[torch.Tensor]) -> None:
    """What user code does to an optimizer between steps: forget a parameter's state, leave a bias without a
    gradient for a step, replace the whole state mapping (``keep``: entries carried into the new one), replace
    a moment buffer, set a step count in place (Adam: its bias corrections must follow)."""
    bias, weight = model[2].bias, model[0].weight
    if step == 2:
        opt.state.pop(weight)
    if step == 3:
        bias.grad = None
    if step == 5:
        old, opt.state = opt.state, defaultdict(dict)
        for p in keep:
            opt.state[p] = old[p]
    if step == 6:
        state = opt.state[weight]
        key = "exp_avg" if "exp_avg" in state else "momentum_buffer"
        state[key] = state[key].clone().mul_(0.5)
    if step == 7 and "step" in opt.state[weight]:
        opt.state[weight]["step"].fill_(1.0)


@pytest.mark.parametrize(
    "opt_kw",
    [
        {"cls": torch.optim.AdamW},
        {"cls": torch.optim.AdamW, "counts_on_host": True},
        {"cls": torch.optim.SGD, "momentum": 0.9},
    ],
)
def test_fused_step_follows_the_optimizer_state_user_code_replaces(opt_kw: dict, monkeypatch) -> None:
    """The fused step keeps the tensors it takes from the optimizer from step to step; state popped, a bias
    without a gradient, the state mapping replaced, a moment buffer replaced and a step count set in place
    must each be seen at once (Adam: with the counts read by the kernel, and as with a CUDA Adam whose
    counts live on the host, where the driver mirrors them):
    the result equals torch.optim's on task loss + halo() with the same edits (float64)."""
    kw = dict(opt_kw)
    cls = kw.pop("cls")
    if kw.pop("counts_on_host", False):
        monkeypatch.setattr(halo_adam, "_reads_counts", lambda steps, device: False)
    ref_model, fused_model = mlp(torch.float64), mlp(torch.float64)
    ref = HALO(ref_model, xi=1e-3, psi=1e-2)
    ref_opt = cls([*ref_model.parameters(), ref.lam], lr=1e-2, **kw)
    fast = HALO(
        fused_model, xi=1e-3, psi=1e-2, **({"coupling": "coupled"} if cls is not torch.optim.SGD else {})
    )
    fast_opt = cls(fused_model.parameters(), lr=1e-2, **kw)
    fast.attach(fast_opt)
    for i, (x, y) in enumerate(batches(dtype=torch.float64)):
        ref_opt.zero_grad()
        (F.cross_entropy(ref_model(x), y) + ref()).backward()
        _edit(ref_model, ref_opt, i, [ref.lam])
        ref_opt.step()
        fast_opt.zero_grad()
        F.cross_entropy(fused_model(x), y).backward()
        _edit(fused_model, fast_opt, i, [])
        fast_opt.step()
        for a, b in zip(ref_model.parameters(), fused_model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"step {i}")
    torch.testing.assert_close(ref.lam, fast.lam, rtol=1e-10, atol=1e-12)
    assert len(fast.update.plan.frames) == 1
