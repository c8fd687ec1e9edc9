"""Checkpoints of a model sharded with FSDP2, 2 processes on the CPU (gloo): a run saved with
``save_sharded`` and resumed in fresh processes with ``load_sharded`` goes on bit-identically (HALO's
target mode with AdamW: weights, λ, its controller, the optimizer; a pruned model: its masks), and
``full_state_dict`` loads into the unsharded model with plain ``load_state_dict``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from haloprune import build_model
from haloprune.core.errors import HaloPruneError
from tests.helpers import REPO, on_ranks, torchrun

STEPS, SAVE_AT = 8, 4


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 11), nn.Tanh(), nn.Linear(11, 5), nn.Tanh(), nn.Linear(5, 3))


def _batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(4, 16, generator=g), torch.randn(4, 3, generator=g)


def _setup(kind: str):
    from torch.distributed.fsdp import fully_shard

    from haloprune import HALO

    model = _net()
    for layer in (model[0], model[2], model[4]):
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    halo = None
    if kind == "halo":
        halo = HALO(model, target_sparsity=0.7)
        halo.attach(opt, total_steps=STEPS)
    return model, opt, halo


def _steps(model, opt, rank: int, steps: range) -> None:
    for t in steps:
        x, y = _batch(t, rank)
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def _snapshot(model, halo) -> dict:
    from haloprune.core.sharded import like
    from haloprune.pruning.masks import get_masks

    out = {"weights": {n: p.detach().full_tensor() for n, p in model.named_parameters()}}
    out["masks"] = {n: m.full_tensor() for n, m in get_masks(model).items()}
    if halo is not None:
        params = halo.penalised_parameters()
        out["lam"] = [
            like(lam, p).full_tensor() for lam, p in zip(halo.lambdas().values(), params, strict=True)
        ]
        out["controller"] = halo.controller.state()
    return out


def _first(rank: int, world: int, out: str) -> None:
    from haloprune.pruning import global_magnitude_prune
    from haloprune.training.fsdp import full_state_dict, save_sharded

    results = {}
    for kind in ("halo", "pruned"):
        model, opt, halo = _setup(kind)
        if kind == "pruned":
            global_magnitude_prune(model, 0.8)
        _steps(model, opt, rank, range(SAVE_AT))
        save_sharded(Path(out) / kind, model, opt, halo)
        results[f"{kind}-saved"] = _snapshot(model, halo)
        _steps(model, opt, rank, range(SAVE_AT, STEPS))
        results[kind] = _snapshot(model, halo)
        full = full_state_dict(model)
        if rank == 0:
            torch.save(full, Path(out) / f"{kind}-full.pt")
        else:
            results[f"{kind}-full-elsewhere"] = full
    torch.save(results, Path(out) / f"first{rank}.pt")


def _resumed(rank: int, world: int, out: str) -> None:
    from haloprune.training.fsdp import load_sharded

    results = {}
    for kind in ("halo", "pruned"):
        model, opt, halo = _setup(kind)
        load_sharded(Path(out) / kind, model, opt, halo)
        results[f"{kind}-loaded"] = _snapshot(model, halo)
        _steps(model, opt, rank, range(SAVE_AT, STEPS))
        results[kind] = _snapshot(model, halo)
    model, opt, halo = _setup("halo")
    try:
        load_sharded(Path(out) / "nowhere", model, opt, halo)
    except HaloPruneError as err:
        results["missing"] = str(err)
    torch.save(results, Path(out) / f"resumed{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[dict]]:
    out = tmp_path_factory.mktemp("fsdp-ckpt")
    on_ranks(_first, 2, str(out))
    on_ranks(_resumed, 2, str(out))
    load = lambda name: torch.load(out / name, weights_only=False)  # noqa: E731
    return out, [load(f"first{r}.pt") for r in (0, 1)], [load(f"resumed{r}.pt") for r in (0, 1)]


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            _assert_identical(value, b[key])
        elif isinstance(value, list):
            assert len(value) == len(b[key])
            for x, y in zip(value, b[key], strict=True):
                assert torch.equal(x, y)
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("kind", ["halo", "pruned"])
def test_a_resumed_run_goes_on_bit_identically(runs, kind: str) -> None:
    _, first, resumed = runs
    for r in (0, 1):
        _assert_identical(resumed[r][f"{kind}-loaded"], first[r][f"{kind}-saved"])
        _assert_identical(resumed[r][kind], first[r][kind])
    if kind == "pruned":
        masks = first[0]["pruned"]["masks"]
        assert masks and all(
            bool((first[0]["pruned"]["weights"][n][~m] == 0).all()) for n, m in masks.items()
        )
    else:
        weights = [w for n, w in first[0]["halo"]["weights"].items() if n.endswith("weight")]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(0.7, abs=0.005)


@pytest.mark.parametrize("kind", ["halo", "pruned"])
def test_the_full_state_dict_loads_into_the_unsharded_model(runs, kind: str) -> None:
    out, first, _ = runs
    plain = _net()
    plain.load_state_dict(torch.load(out / f"{kind}-full.pt", weights_only=True))  # strict, no haloprune
    for name, p in plain.named_parameters():
        assert torch.equal(p.detach(), first[0][kind]["weights"][name])
    assert first[1][f"{kind}-full-elsewhere"] == {}


def test_no_checkpoint_is_a_clear_error(runs) -> None:
    _, _, resumed = runs
    assert all("is not a sharded checkpoint" in r["missing"] for r in resumed)


@pytest.mark.usefixtures("real_fmnist")
def test_the_example_runs_under_torchrun_and_resumes(tmp_path: Path) -> None:
    """examples/fsdp_halo.py, the documented command (2 processes, gloo), on real Fashion-MNIST."""
    example = str(REPO / "examples" / "fsdp_halo.py")
    cmd = torchrun(2, example, "--out", str(tmp_path), "--epochs", "2", "--train-subset", "3000")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("processes: 95.00% zeros before pruning") == 1  # the first process reports
    plain = build_model("lenet-300-100")
    plain.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # no haloprune needed
    weights = [p for n, p in plain.named_parameters() if n.endswith("weight")]
    assert sum(int((w == 0).sum()) for w in weights) == round(0.95 * sum(w.numel() for w in weights))
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)  # resumes: nothing left
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.splitlines()[0] == first.stdout.splitlines()[0]
