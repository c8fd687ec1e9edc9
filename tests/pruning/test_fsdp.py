"""Pruning a model sharded with FSDP2 (``fully_shard``), 2 processes on the CPU (gloo): the masks are
exactly the unsharded model's (shards of uneven size, a layer with no rows on one process, ties across
processes), sharded like their weights, and they hold through sharded AdamW steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from haloprune.core.errors import HaloPruneError
from haloprune.core.sharded import Layout, kth_smallest, layout, lowest
from haloprune.pruning import global_magnitude_prune, layerwise_magnitude_prune, sparsity_report
from haloprune.pruning.masks import get_masks, restore_masks
from haloprune.pruning.slim import slim
from haloprune.pruning.storage import save_sparse
from haloprune.pruning.structured import group_prune
from tests.helpers import on_ranks


def _net() -> nn.Module:
    """Layers of 5, 3 and 1 rows: over 2 processes 3 + 2, 2 + 1 and 1 + 0 rows; ties across them."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight[::2, :3] = 0.25  # equal magnitudes in rows of both processes' shards
        net[2].weight[:, 1] = -0.25
        net[0].weight[1, 4:] = 0.0
    return net


CASES = {  # name: (prune function, keywords)
    "global-0.5": (global_magnitude_prune, {"sparsity": 0.5}),
    "global-0.9": (global_magnitude_prune, {"sparsity": 0.9}),
    "layerwise-0.6": (layerwise_magnitude_prune, {"sparsity": 0.6}),
    "nonzero-0.5": (global_magnitude_prune, {"sparsity": 0.5, "of": "nonzero"}),
    "exclude": (global_magnitude_prune, {"sparsity": 0.7, "exclude": ["4.*"], "include_bias": True}),
}


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _worker(rank: int, world: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    results = {}
    for case, (prune, kw) in CASES.items():
        model = _net()
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        fully_shard(model)
        if case == "global-0.9":  # pruned twice: the second call scores masked weights first
            global_magnitude_prune(model, 0.3)
        masks = prune(model, **kw)
        results[case] = {
            "masks": {n: _full(m).clone() for n, m in masks.items()},
            "sharded": {n: type(m).__name__ for n, m in masks.items()},
            "report": [(r.name, r.params, r.nonzero) for r in sparsity_report(model)],
        }
    # masks hold through sharded AdamW steps (momentum from before the pruning included)
    model = _net()
    fully_shard(model[0])
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    x = torch.randn(8, 7, generator=torch.Generator().manual_seed(rank))
    for step in range(6):
        if step == 2:
            global_magnitude_prune(model, 0.8)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    masks = {n: _full(m) for n, m in get_masks(model).items()}
    weights = {n: _full(p.detach()) for n, p in model.named_parameters()}
    restored = {n: _full(m) for n, m in restore_masks(model).items()}
    refused = []  # whole-model operations: one clear error each
    for call in (
        lambda: group_prune(model, torch.randn(2, 7), params=20),
        lambda: slim(model, torch.randn(2, 7)),
        lambda: save_sparse(model, f"{out}/never.safetensors", architecture={}),
    ):
        try:
            call()
            refused.append("no error")
        except HaloPruneError as err:
            refused.append(str(err))
    kth = []  # the k-th smallest over both processes' blocks, whatever the guess
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        full = torch.randint(0, 6, (int(torch.randint(2, 40, (1,), generator=g)),), generator=g).float() * 0.1
        block = full[: len(full) // 3] if rank == 0 else full[len(full) // 3 :]
        where = layout([model[0].weight], ["w"])
        for k in (1, len(full) // 2 + 1, len(full)):
            for near in (None, 0.0, 0.1, 0.3, 0.45, 2.0, -1.0):
                kth.append(
                    (seed, k, near, kth_smallest(block, k, near, where), float(full.kthvalue(k).values))
                )
    saved = {
        "kth": kth,
        "cases": results,
        "masks": masks,
        "weights": weights,
        "restored": restored,
        "refused": refused,
    }
    torch.save(saved, f"{out}/{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("fsdp")
    on_ranks(_worker, 2, str(out))
    return [torch.load(Path(out) / f"{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("case", CASES)
def test_masks_are_the_unsharded_models(ranks: list[dict], case: str) -> None:
    prune, kw = CASES[case]
    model = _net()
    if case == "global-0.9":
        global_magnitude_prune(model, 0.3)
    expected = prune(model, **kw)
    for got in ranks:
        assert got["cases"][case]["masks"].keys() == expected.keys()
        for name, mask in expected.items():
            assert torch.equal(got["cases"][case]["masks"][name], mask), f"{case}: {name}"
        assert set(got["cases"][case]["sharded"].values()) == {"DTensor"}
        assert got["cases"][case]["report"] == [(r.name, r.params, r.nonzero) for r in sparsity_report(model)]


def test_masks_hold_through_sharded_adamw(ranks: list[dict]) -> None:
    r0, r1 = ranks
    assert r0["masks"].keys() == {"0.weight", "2.weight", "4.weight"}
    for name, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][name])
        w = r0["weights"][name]
        assert int((~mask).sum()) > 0 and bool((w[~mask] == 0).all()), name  # 4 steps after the pruning
        assert torch.equal(r0["restored"].get(name, torch.ones_like(mask)), w != 0)
    total = sum(m.numel() for m in r0["masks"].values())
    assert sum(int((~m).sum()) for m in r0["masks"].values()) == round(0.8 * total)


def test_kth_smallest_over_processes_is_kthvalue_of_the_whole(ranks: list[dict]) -> None:
    for r in ranks:
        assert r["kth"] and all(got == want for *_, got, want in r["kth"])


def test_whole_model_operations_refuse_a_sharded_model(ranks: list[dict]) -> None:
    for r in ranks:
        assert [m.split(" works on")[0] for m in r["refused"]] == ["group_prune", "slim", "save_sparse"]
        assert all("gather the sharded one first" in m for m in r["refused"])


@pytest.mark.parametrize("seed", range(5))
def test_lowest_in_one_process_is_a_stable_sort(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randint(0, 4, (n,), generator=g).float() for n in (7, 1, 12, 0, 5)]
    scores[2][3] = float("-inf")
    flat = torch.cat(scores)
    for n in (0, 1, 9, 13, len(flat)):
        keep = torch.ones(len(flat), dtype=torch.bool)
        keep[torch.sort(flat, stable=True).indices[:n]] = False
        got = torch.cat(lowest(scores, [True] * len(scores), n, Layout()))
        assert torch.equal(got, keep), n
