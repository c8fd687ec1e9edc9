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

The optimizer may hold the penalty's λ in a group of its own (as ``haloprune train`` builds it, and as
``halo()`` in the loss needs it): that group's settings and λ's optimizer state (sharded like the weights,
as λ is) are saved and loaded beside the model's. :class:`ShardedCheckpoint` is ``fit``'s callback that
writes one after every epoch, for ``fit(resume=<folder>)``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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
from haloprune.core.sharded import reshard
from haloprune.pruning.masks import attach_masks, mask_entries, mask_key, masks_of
from haloprune.training.callbacks import Callback, FitState
from haloprune.training.distributed import barrier, world

__all__ = [
    "ShardedCheckpoint",
    "full_state_dict",
    "load_progress",
    "load_sharded",
    "save_sharded",
    "saved_extra",
]

_SMALL = "haloprune.pt"  # beside DCP's files: what is the same on every process (written by the first)
_LAM_STATE = "penalty_optimizer"  # λ's optimizer state, one entry per penalised weight


def _on_first() -> bool:
    return world().is_main


def _barrier() -> None:
    barrier(world())


def _penalty_groups(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, penalty: nn.Module | None
) -> list[int]:
    """The indices of the optimizer's groups that hold the penalty's λ (one group of λ alone); any
    other parameter that is not the model's is refused."""
    if optimizer is None:
        return []
    own = {id(p) for p in model.parameters()}
    lam = getattr(penalty, "lam", None)
    found = []
    for i, group in enumerate(optimizer.param_groups):
        ids = {id(p) for p in group["params"]}
        if ids <= own:
            continue
        if lam is not None and hasattr(penalty, "per_weight") and ids == {id(lam)}:
            found.append(i)
            continue
        raise HaloPruneError(
            "a sharded checkpoint takes an optimizer of the model's parameters, and of the penalty's λ in "
            "a group of its own (optimizer.add_param_group({'params': halo.parameters()}))"
        )
    return found


@contextmanager
def _model_groups(optimizer: torch.optim.Optimizer, groups: list[int]) -> Iterator[None]:
    """``optimizer`` with only its groups of the model's parameters, for torch's state-dict functions
    (they name every parameter by its place in the model); the groups of λ and their state are put back
    after, the groups where they were (in the list ``optimizer.load_state_dict`` may have put in place),
    the state unless it was set meanwhile."""
    held = [optimizer.param_groups[i] for i in groups]
    states = {p: optimizer.state.pop(p) for g in held for p in g["params"] if p in optimizer.state}
    for i in reversed(groups):
        del optimizer.param_groups[i]
    try:
        yield
    finally:
        for i, group in zip(groups, held, strict=True):
            optimizer.param_groups.insert(i, group)
        for p, state in states.items():
            optimizer.state.setdefault(p, state)


def _lam_state(penalty: Any, optimizer: torch.optim.Optimizer, groups: list[int]) -> tuple[dict, dict]:
    """λ's optimizer state: its tensors laid out like λ, one entry per penalised weight sharded like it
    (for DCP), and the rest — the groups' settings, scalars such as Adam's step — the same everywhere."""
    sharded: dict[str, dict[str, torch.Tensor]] = {}
    small: dict[str, Any] = {"groups": [], "scalars": {}}
    for i in groups:
        small["groups"].append({k: v for k, v in optimizer.param_groups[i].items() if k != "params"})
    for key, value in optimizer.state.get(penalty.lam, {}).items():
        if isinstance(value, torch.Tensor) and value.shape == penalty.lam.shape and value.dim() == 1:
            sharded[key] = penalty.per_weight(value.detach())
        else:
            small["scalars"][key] = value
    return sharded, small


def _set_lam_state(
    penalty: Any, optimizer: torch.optim.Optimizer, groups: list[int], sharded: dict, small: dict
) -> None:
    """λ's optimizer groups and state back from :func:`_lam_state`'s two parts."""
    for i, settings in zip(groups, small["groups"], strict=True):
        optimizer.param_groups[i].update(settings)
    lam = penalty.lam
    state = {k: penalty.flat_of(v).to(lam.dtype) for k, v in sharded.items()}
    state.update(small["scalars"])
    if state:
        optimizer.state[lam] = state
    else:
        optimizer.state.pop(lam, None)


def _state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, penalty: Any, groups: list[int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What DCP saves (each process its shards) and what the first process saves whole."""
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    state["masks"] = mask_entries(model)
    small: dict[str, Any] = {}
    if optimizer is not None:
        with _model_groups(optimizer, groups):
            state["optimizer"] = get_optimizer_state_dict(model, optimizer)
        if groups:
            state[_LAM_STATE], small[_LAM_STATE] = _lam_state(penalty, optimizer, groups)
    if penalty is not None:
        state["penalty"] = penalty.state_dict()
    return state, small


def save_sharded(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    penalty: nn.Module | None = None,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a sharded checkpoint of ``model`` (and ``optimizer``, ``penalty``) to the folder ``path``,
    from every process (a collective call). ``extra``: anything else to keep (the first process's,
    pickled), handed back by :func:`load_sharded`. Returns ``path``."""
    model = unwrap(model)
    reshard(model)
    groups = _penalty_groups(model, optimizer, penalty)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if _on_first() and partial.exists():
        shutil.rmtree(partial)  # left by a save that was killed
    _barrier()
    state, small = _state(model, optimizer, penalty, groups)
    dcp.save(state, checkpoint_id=str(partial))
    if _on_first():
        torch.save({**small, "extra": extra}, partial / _SMALL)
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


def saved_extra(path: str | Path) -> dict[str, Any] | None:
    """The ``extra`` a checkpoint of :func:`save_sharded` holds, read without loading the rest."""
    small = Path(path) / _SMALL
    return torch.load(small, weights_only=True).get("extra") if small.is_file() else None


def load_sharded(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    penalty: nn.Module | None = None,
) -> dict[str, Any] | None:
    """Load a checkpoint of :func:`save_sharded` into ``model`` (and ``optimizer``, ``penalty``), sharded
    as when it was saved, from every process (a collective call); the masks it holds are attached.
    Returns the ``extra`` it was saved with."""
    model = unwrap(model)
    reshard(model)
    groups = _penalty_groups(model, optimizer, penalty)
    path = Path(path)
    if not (path / ".metadata").is_file():
        raise HaloPruneError(f"{path} is not a sharded checkpoint (no .metadata in it)")
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    small = torch.load(path / _SMALL, weights_only=True) if (path / _SMALL).is_file() else {}
    state, _ = _state(model, optimizer, penalty, groups)  # templates (an optimizer's state is made here)
    params = dict(model.named_parameters())
    for name, p in params.items():  # a template for each mask the checkpoint holds
        key = mask_key(name)
        if f"masks.{key}" in saved:
            like = torch.ones_like(p, dtype=torch.bool)
            state["masks"][key] = like if isinstance(like, DTensor) else like.detach()
    wanted = [k for k in ("optimizer", "penalty") if k in state]
    missing = [k for k in wanted if not any(s.startswith(k + ".") or s == k for s in saved)]
    if missing:
        raise HaloPruneError(f"{path} holds no {' and no '.join(missing)} state")
    lam_saved = small.get(_LAM_STATE)
    if groups and (lam_saved is None or len(lam_saved["groups"]) != len(groups)):
        raise HaloPruneError(f"{path} holds no optimizer state for λ (saved without it in the optimizer)")
    if groups:  # a template for each of λ's state tensors the checkpoint holds
        prefix = _LAM_STATE + "."
        keys = {k[len(prefix) :].split(".", 1)[0] for k in saved if k.startswith(prefix)}
        zeros = torch.zeros_like(penalty.lam.detach())  # type: ignore[union-attr]
        state[_LAM_STATE] = {k: penalty.per_weight(zeros.clone()) for k in keys}  # type: ignore[union-attr]
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    if optimizer is not None:
        with _model_groups(optimizer, groups):
            set_optimizer_state_dict(model, optimizer, state["optimizer"])
        if groups:
            _set_lam_state(penalty, optimizer, groups, state[_LAM_STATE], lam_saved)
    if penalty is not None:
        penalty.load_state_dict(state["penalty"])
    attach_masks(model, masks_of(state["masks"]))
    return small.get("extra")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a sharded ``model`` gathered into one plain state dict on the CPU, on the first
    process (every other process gets ``{}``); a collective call. The keys are those of the unsharded
    model, so ``torch.save`` of it loads with plain ``load_state_dict``."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(unwrap(model), options=options)


class ShardedCheckpoint(Callback):
    """``fit``'s checkpoint for a sharded model: after every epoch, every process writes its part of
    the run — model, masks, optimizer, penalty — and the first process where the run stands (lr
    schedule, batch generator, step, metrics rows so far, each process's RNG state) to the folder
    ``path`` (:func:`save_sharded`); ``fit(resume=path)`` goes on from it exactly."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        progress = state.progress()
        progress["torch_rng"] = _each_process(progress["torch_rng"])
        save_sharded(self.path, state.model, state.optimizer, state.penalty, extra=progress)


def load_progress(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, penalty: nn.Module | None
) -> dict[str, Any]:
    """Load a :class:`ShardedCheckpoint` into ``model``, ``optimizer`` and ``penalty`` (a collective
    call) and return where the run stood (for :meth:`FitState.restore_progress`), with this process's
    RNG state (the first process's when the checkpoint was written by another number of processes)."""
    progress = load_sharded(path, model, optimizer, penalty)
    if progress is None or "torch_rng" not in progress:
        raise HaloPruneError(f"{path} holds no training progress: it was not written by ShardedCheckpoint")
    states, here = progress["torch_rng"], world()
    progress["torch_rng"] = states[here.rank] if len(states) == here.size else states[0]
    return progress


def _each_process(value: Any) -> list[Any]:
    """``value`` of every process, in rank order (on every process)."""
    here = world()
    if not here.distributed:
        return [value]
    out: list[Any] = [None] * here.size
    dist.all_gather_object(out, value)
    return out
