"""HALO on a model sharded with FSDP2 (``fully_shard``), 2 processes on the CPU (gloo): from the same
weights and data, a few steps give the weights and λ of the same steps on the unsharded model (in the
loss and attached; SGD, Adam coupled, AdamW decoupled, prox, target mode), each process holding only its
shards' λ, and the logged value and statistics are the global ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from haloprune import HALO, L1
from haloprune.core.errors import HaloPruneError
from tests.helpers import on_ranks

STEPS = 6
CASES = {  # name: (optimizer, its keywords, HALO's keywords, attached)
    "sgd-attached": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, {"xi": 2e-3, "psi": 1e-2}, True),
    "sgd-in-loss": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, {"xi": 2e-3, "psi": 1e-2}, False),
    "sgd-prox": (torch.optim.SGD, {"lr": 0.05}, {"xi": 5e-2, "psi": 1e-2, "prox": True}, True),
    "adam-coupled": (torch.optim.Adam, {"lr": 0.01}, {"xi": 2e-3, "psi": 1e-2}, True),
    "adamw-decoupled": (
        torch.optim.AdamW,
        {"lr": 0.01},
        {"xi": 2e-3, "psi": 1e-2, "coupling": "decoupled", "p": 40.0, "form": "l2"},
        True,
    ),
    "adamw-in-loss": (torch.optim.AdamW, {"lr": 0.01}, {"xi": 2e-3, "psi": 1e-2}, False),
    "adamw-target": (torch.optim.AdamW, {"lr": 0.01}, {"target_sparsity": 0.6}, True),
    "sgd-target": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, {"target_sparsity": 0.75}, True),
}


def _net() -> nn.Module:
    """Layers of 21, 9 and 2 rows: over 2 processes 11 + 10, 5 + 4 and 1 + 1."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 21), nn.Tanh(), nn.Linear(21, 9), nn.Tanh(), nn.Linear(9, 2))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 8, 32, generator=g), torch.randn(STEPS, 8, 2, generator=g)


def _train(model: nn.Module, case: str, part: slice) -> tuple[HALO, list[float]]:
    """STEPS steps of the case on ``model`` with the rows ``part`` of each batch; HALO's value each step."""
    opt_cls, opt_kw, halo_kw, attached = CASES[case]
    halo = HALO(model, **halo_kw)
    params = [*model.parameters()] if attached else [*model.parameters(), *halo.parameters()]
    opt = opt_cls(params, **opt_kw)
    if attached:
        halo.attach(opt, total_steps=STEPS) if "target" in case else halo.attach(opt)
    x, y = _data()
    values = []
    for t in range(STEPS):
        loss = F.mse_loss(model(x[t, part]), y[t, part])
        if not attached:
            loss = loss + halo()
        loss.backward()
        opt.step()
        opt.zero_grad()
        values.append(float(halo().detach()))
    return halo, values


def _worker(rank: int, world: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from haloprune.core.sharded import like

    results = {}
    for case in CASES:
        model = _net()
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        fully_shard(model)
        half = 8 // world
        halo, values = _train(model, case, slice(rank * half, (rank + 1) * half))
        params = halo.penalised_parameters()
        lams = [like(lam, p).full_tensor() for lam, p in zip(halo.lambdas().values(), params, strict=True)]
        results[case] = {
            "weights": {n: p.detach().full_tensor() for n, p in model.named_parameters()},
            "lams": dict(zip(halo.param_names, lams, strict=True)),
            "held": halo.lam.numel(),
            "values": values,
            "stats": halo.stats(),
        }
    # a penalty that does not shard its state: refused
    try:
        L1(model, xi=1e-3)
        results["l1"] = "no error"
    except HaloPruneError as err:
        results["l1"] = str(err)
    # built before the model was sharded: refused, not silently stepping stale weights
    model = _net()
    halo = HALO(model, xi=1e-3, psi=1e-2)
    fully_shard(model)
    try:
        halo()
        results["before"] = "no error"
    except HaloPruneError as err:
        results["before"] = str(err)
    torch.save(results, Path(out) / f"{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("halo-fsdp")
    on_ranks(_worker, 2, str(out))
    return [torch.load(out / f"{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("case", CASES)
def test_sharded_steps_are_the_unsharded_steps(ranks: list[dict], case: str) -> None:
    model = _net()
    halo, values = _train(model, case, slice(None))
    for got in ranks:
        res = got[case]
        for name, p in model.named_parameters():
            torch.testing.assert_close(res["weights"][name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)
        for name, lam in halo.lambdas().items():
            torch.testing.assert_close(res["lams"][name], lam.detach(), rtol=1e-5, atol=1e-6, msg=name)
        assert res["values"] == pytest.approx(values, rel=1e-5)
        stats = halo.stats()
        assert res["stats"].keys() == stats.keys()
        assert res["stats"] == pytest.approx(stats, rel=1e-5, abs=1e-7)
    # each process holds λ for its shards only: 11 + 5 + 1 rows on the first, 10 + 4 + 1 on the second
    assert [r[case]["held"] for r in ranks] == [11 * 32 + 5 * 21 + 9, 10 * 32 + 4 * 21 + 9]
    if "target" in case:
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(CASES[case][2]["target_sparsity"], abs=0.005)


def test_a_penalty_built_before_sharding_is_refused(ranks: list[dict]) -> None:
    assert all("built before the model was sharded" in r["before"] for r in ranks)


def test_a_penalty_that_does_not_shard_is_refused(ranks: list[dict]) -> None:
    assert all(r["l1"].startswith("L1 does not work on a model sharded with fully_shard") for r in ranks)
