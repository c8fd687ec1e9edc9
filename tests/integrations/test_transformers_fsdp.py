"""HALOTrainerCallback on a Hugging Face GPT-2 (its ``Conv1D`` layers, built from a config) sharded with
FSDP2, 2 processes on the CPU (gloo): the callback's hooks called as the Trainer calls them under
accelerate's FSDP2 — the model sharded and the optimizer built on its shards before ``on_train_begin``,
``on_save`` on every process, ``on_train_end`` on every process.

The Trainer itself cannot run FSDP2 here: accelerate shards with FSDP only on accelerators (on the CPU it
runs DDP). What is checked is the callback's own part: HALO built on the shards (λ per process: its
shards'), ``halo.pt`` written once with λ gathered whole (both processes take part), read back by a
resumed run and sharded again, exactly; the model pruned at the end to the target over all processes.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import on_ranks

pytest.importorskip("transformers")

STEPS, SAVE_AT, TARGET = 8, 4, 0.7


def _setup(rank: int, world: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from haloprune.training.distributed import World, shard_model

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = shard_model(GPT2LMHeadModel(config), torch.device("cpu"), World(rank, world))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 - t / STEPS)
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler, t: int, rank: int) -> None:
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(100 * t + rank))
    logits = model(ids).logits
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def _halo_state(callback) -> dict:
    """λ gathered whole (a collective call) and the controller."""
    halo = callback.halo
    lam = {n: t.full_tensor() for n, t in halo.per_weight(halo.lam.detach()).items()}
    return {"lam": lam, "controller": halo.controller.state()}


def _trainer_state(step: int, rank: int):
    from transformers import TrainerState

    state = TrainerState(max_steps=STEPS, global_step=step)
    state.is_world_process_zero = rank == 0
    return state


def _first(rank: int, world: int, out: str) -> None:
    from haloprune.integrations.transformers import HALOTrainerCallback

    model, optimizer, scheduler = _setup(rank, world)
    callback = HALOTrainerCallback(target_sparsity=TARGET)
    args = SimpleNamespace(output_dir=out)
    kwargs = {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler}
    callback.on_train_begin(args, _trainer_state(0, rank), None, **kwargs)
    halo = callback.halo
    results = {"local": halo.num_penalized, "whole": sum(math.prod(s) for s in halo.full_shapes)}
    for t in range(SAVE_AT):
        _step(model, optimizer, scheduler, t, rank)
    if rank == 0:
        (Path(out) / f"checkpoint-{SAVE_AT}").mkdir()
    torch.distributed.barrier()
    callback.on_save(args, _trainer_state(SAVE_AT, rank), None)
    results["saved"] = _halo_state(callback)
    for t in range(SAVE_AT, STEPS):
        _step(model, optimizer, scheduler, t, rank)
    callback.on_train_end(args, _trainer_state(STEPS, rank), None, model=model)
    from haloprune import sparsity_report

    rows = sparsity_report(model)  # global counts over the pruned, still sharded model
    results["zeros"] = sum(r.params - r.nonzero for r in rows) / sum(r.params for r in rows)
    torch.save(results, Path(out) / f"first{rank}.pt")


def _resumed(rank: int, world: int, out: str) -> None:
    from haloprune.integrations.transformers import HALOTrainerCallback

    model, optimizer, scheduler = _setup(rank, world)
    callback = HALOTrainerCallback(target_sparsity=TARGET)
    kwargs = {"model": model, "optimizer": optimizer, "lr_scheduler": scheduler}
    callback.on_train_begin(SimpleNamespace(output_dir=out), _trainer_state(SAVE_AT, rank), None, **kwargs)
    torch.save({"loaded": _halo_state(callback)}, Path(out) / f"resumed{rank}.pt")


@pytest.mark.usefixtures("one_thread")
def test_the_callback_on_a_sharded_gpt2_saves_resumes_and_prunes(tmp_path: Path) -> None:
    on_ranks(_first, 2, str(tmp_path))
    on_ranks(_resumed, 2, str(tmp_path))
    first = [torch.load(tmp_path / f"first{r}.pt", weights_only=False) for r in (0, 1)]
    resumed = [torch.load(tmp_path / f"resumed{r}.pt", weights_only=False) for r in (0, 1)]
    # each process holds λ for its own shards only
    assert first[0]["local"] + first[1]["local"] == first[0]["whole"] == first[1]["whole"]
    assert 0 < first[1]["local"] < first[0]["whole"]
    saved = torch.load(tmp_path / f"checkpoint-{SAVE_AT}" / "halo.pt", weights_only=True)
    assert any(k.startswith("lam.") for k in saved["halo"])  # whole, one entry per weight
    for r in (0, 1):
        for name, lam in first[0]["saved"]["lam"].items():
            assert torch.equal(saved["halo"][f"lam.{name}"], lam)
            assert torch.equal(resumed[r]["loaded"]["lam"][name], lam), name
        assert resumed[r]["loaded"]["controller"] == first[r]["saved"]["controller"]
    assert not all(torch.equal(t, torch.ones_like(t)) for t in first[0]["saved"]["lam"].values())
    assert first[0]["zeros"] == first[1]["zeros"] == pytest.approx(TARGET, abs=0.005)
