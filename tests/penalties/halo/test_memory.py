"""HALO's memory: the bytes it keeps per penalised weight with each optimizer, and ``lambda_dtype =
"bfloat16"`` (half of it; λ rounded stochastically in the fused step, so small updates still count)."""

from __future__ import annotations

import pytest
import torch

from haloprune import HALO
from haloprune.config import PenaltyConfig
from haloprune.penalties import build_penalty
from haloprune.penalties.halo.fused import store
from tests.helpers import batches, mlp, train_steps


def optimizer(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=1e-2)


@pytest.mark.parametrize(
    ("kind", "settings", "float32", "bfloat16"),
    [
        ("sgd", {"xi": 1e-3, "psi": 1e-2}, 8, 4),  # λ and its momentum
        ("adamw", {"xi": 1e-3, "psi": 1e-2, "coupling": "coupled"}, 12, 6),  # λ and its two Adam moments
        ("adamw", {"target_sparsity": 0.5}, 4, 2),  # decoupled: λ alone (plain lr steps)
    ],
)
def test_bytes_per_penalised_weight(kind: str, settings: dict, float32: int, bfloat16: int) -> None:
    for dtype, expected in (("float32", float32), ("bfloat16", bfloat16)):
        model = mlp()
        halo = HALO(model, lambda_dtype=dtype, **settings)
        opt = optimizer(kind, model)
        halo.attach(opt, total_steps=5)
        train_steps(model, opt, 5)
        assert halo.state_bytes_per_weight() == expected, (dtype, kind, settings)
        assert halo.lam.dtype == getattr(torch, dtype)


def test_stochastic_rounding_is_unbiased_where_rounding_to_nearest_is_stuck() -> None:
    torch.manual_seed(0)
    value = torch.full((200_000,), 1.0 + 1e-3)  # bfloat16 has 1 and 1.0078125 around it
    dst = torch.empty_like(value, dtype=torch.bfloat16)
    store(dst, value, seed=0)
    assert set(dst.unique().tolist()) == {1.0, 1.0078125}
    assert dst.double().mean().item() == pytest.approx(1.0 + 1e-3, abs=5e-5)
    assert value.to(torch.bfloat16).unique().tolist() == [1.0]  # round to nearest loses the update


def test_bfloat16_lambda_follows_the_float32_trajectory() -> None:
    """λ's per-step change here (lr·ψ = 5e-4) is a sixteenth of bfloat16's step at 1: rounded to nearest
    λ would never move; rounded stochastically it travels as far as float32 λ does."""
    means = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = mlp()
        halo = HALO(model, xi=1e-4, psi=1e-2, lambda_dtype=dtype)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        halo.attach(opt)
        train_steps(model, opt, 8)
        means[dtype] = halo.lam.double().mean().item()
    assert means["float32"] < 1.0 - 3e-3  # it moved
    assert means["bfloat16"] == pytest.approx(means["float32"], rel=1e-3)


def test_bfloat16_lambda_needs_the_fused_step() -> None:
    with pytest.raises(ValueError, match="lambda_dtype='bfloat16' is a fused-path option"):
        HALO(mlp(), xi=1e-3, psi=1e-2, lambda_dtype="bfloat16", fused=False)
    halo = HALO(mlp(), xi=1e-3, psi=1e-2, lambda_dtype="bfloat16")
    with pytest.raises(RuntimeError, match="needs the fused step"):
        halo()
    with pytest.raises(ValueError, match="lambda_dtype must be 'float32' or 'bfloat16'"):
        HALO(mlp(), xi=1e-3, psi=1e-2, lambda_dtype="float16")  # type: ignore[arg-type]


def test_config_key_and_state_dict_across_optimizers() -> None:
    cfg = PenaltyConfig(name="halo", target_sparsity=0.5, lambda_dtype="bfloat16")
    model = mlp()
    halo = build_penalty("halo", model, **cfg.kwargs())
    assert halo.lam.dtype == torch.bfloat16
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    halo.attach(opt, total_steps=5)
    train_steps(model, opt, 3)
    saved = halo.state_dict()
    assert saved["lam_momentum"].numel() == 0  # decoupled Adam keeps no moment for λ
    fresh = build_penalty("halo", mlp(), **cfg.kwargs())  # not attached yet: a full momentum buffer
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.lam, halo.lam) and fresh.lam_momentum.numel() == 0
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    halo.attach(sgd)  # now SGD with momentum: the buffer comes back
    assert halo.lam_momentum.shape == halo.lam.shape
    with pytest.raises(ValueError, match="lambda_dtype"):
        PenaltyConfig(name="l1", xi=1e-3, lambda_dtype="bfloat16")


def test_stochastic_rounding_bits_depend_on_the_seed_and_repeat_with_it() -> None:
    """The rounding of a step is a function of (element, step, tensor): another step rounds otherwise
    (no systematic bias per element), the same step the same (a resumed run rounds as the uninterrupted
    one)."""
    value = torch.full((50_000,), 1.0 + 1e-3)
    out = {}
    for seed, salt in ((0, 0), (1, 0), (0, 1), (0, 0)):
        dst = torch.empty_like(value, dtype=torch.bfloat16)
        store(dst, value, torch.tensor(seed), salt)
        out.setdefault((seed, salt), []).append(dst)
        assert dst.double().mean().item() == pytest.approx(1.0 + 1e-3, abs=2e-4)
    assert torch.equal(*out[0, 0])
    assert not torch.equal(out[0, 0][0], out[1, 0][0]) and not torch.equal(out[0, 0][0], out[0, 1][0])


@pytest.mark.parametrize("compile_step", ["1", "0"])
def test_float32_lambda_of_a_bfloat16_model_is_computed_in_float32(
    compile_step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bfloat16 model keeps float32 λ, and the fused step computes λ's update in float32, compiled or
    eager (regression: the eager step read λ in the weights' bfloat16, where λ's per-step change of
    lr·ψ = 5e-4 rounds away and λ never moved)."""
    monkeypatch.setenv("HALOPRUNE_COMPILE", compile_step)
    torch.manual_seed(0)
    model = mlp(torch.bfloat16)
    halo = HALO(model, xi=1e-4, psi=1e-2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    halo.attach(opt)
    for x, y in batches(8, dtype=torch.bfloat16):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert halo.lam.dtype == torch.float32
    assert halo.lam.double().mean().item() < 1.0 - 3e-3
