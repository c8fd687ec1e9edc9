"""Checkpoints of a model sharded with FSDP2 (``fully_shard``): sharded to resume, whole to ship.
(Not imported by ``import haloprune``: torch's distributed checkpointing is slow to import.)

:func:`save_sharded` writes one ``torch.distributed.checkpoint`` (DCP) folder from every process at once —
the model's weights, the pruning masks, the optimizer's state and the penalty's (HALO's λ and its moments,
sharded like the weights, and target mode's controller) — each process writing only its shards, and
:func:`load_sharded` puts them back into a model sharded the same way, so the run goes on exactly as if
it had not stopped. :func:`full_state_dict` gathers the weights into one ordinary state dict on the first
process (pruned weights are zeros in it): ``torch.save`` it, and it loads into the unsharded model with
plain ``model.load_state_dict`` (or haloprune's :func:`~haloprune.pruning.masks.load_state_dict`, which
puts the masks back from the zeros).

A checkpoint is written to ``<path>.partial`` and renamed to ``path`` only once every process has
finished, so a run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from haloprune.core.errors import HaloPruneError
from haloprune.core.params import unwrap
from haloprune.pruning.masks import attach_masks, mask_entries, mask_key, masks_of

__all__ = ["full_state_dict", "load_sharded", "save_sharded"]


def _on_first() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    if optimizer is None:
        return
    own = {id(p) for p in model.parameters()}
    if any(id(p) not in own for g in optimizer.param_groups for p in g["params"]):
        raise HaloPruneError(
            "a sharded checkpoint takes an optimizer of the model's parameters only: attach HALO "
            "(halo.attach(optimizer)) rather than giving halo.parameters() to the optimizer"
        )


def _state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, penalty: nn.Module | None
) -> dict[str, Any]:
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    state["masks"] = mask_entries(model)
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(model, optimizer)
    if penalty is not None:
        state["penalty"] = penalty.state_dict()
    return state


def save_sharded(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    penalty: nn.Module | None = None,
) -> Path:
    """Write a sharded checkpoint of ``model`` (and ``optimizer``, ``penalty``) to the folder ``path``,
    from every process (a collective call). Returns ``path``."""
    model = unwrap(model)
    _check_optimizer(model, optimizer)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if _on_first() and partial.exists():
        shutil.rmtree(partial)  # left by a save that was killed
    _barrier()
    dcp.save(_state(model, optimizer, penalty), checkpoint_id=str(partial))
    _barrier()
    if _on_first():
        old = path.with_name(path.name + ".old")
        if path.exists():
            path.rename(old)
        partial.rename(path)
        if old.exists():
            shutil.rmtree(old)
    _barrier()
    return path


def load_sharded(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    penalty: nn.Module | None = None,
) -> None:
    """Load a checkpoint of :func:`save_sharded` into ``model`` (and ``optimizer``, ``penalty``), sharded
    as when it was saved, from every process (a collective call); the masks it holds are attached."""
    model = unwrap(model)
    _check_optimizer(model, optimizer)
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise HaloPruneError(f"{path} is not a sharded checkpoint (no .metadata in it)")
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state = _state(model, optimizer, penalty)  # the templates (an optimizer's state is made here)
    params = dict(model.named_parameters())
    for name, p in params.items():  # a template for each mask the checkpoint holds
        key = mask_key(name)
        if f"masks.{key}" in saved:
            like = torch.ones_like(p, dtype=torch.bool)
            state["masks"][key] = like if isinstance(like, DTensor) else like.detach()
    missing = [k for k in ("optimizer", "penalty") if k in state and not any(s.startswith(k) for s in saved)]
    if missing:
        raise HaloPruneError(f"{path} holds no {' and no '.join(missing)} state")
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if penalty is not None:
        penalty.load_state_dict(state["penalty"])
    attach_masks(model, masks_of(state["masks"]))


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a sharded ``model`` gathered into one plain state dict on the CPU, on the first
    process (every other process gets ``{}``); a collective call. The keys are those of the unsharded
    model, so ``torch.save`` of it loads with plain ``load_state_dict``."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(unwrap(model), options=options)
