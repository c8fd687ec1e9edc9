"""Data-parallel training across processes (``torchrun``), the few helpers the training loop needs.

``torchrun --nproc_per_node=N -m haloprune train --config ...`` sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` (and the rendezvous address); :func:`setup` reads them and joins the process group —
NCCL when training on CUDA, gloo on the CPU. Without those variables everything here is a no-op for a
single process.

How a run stays identical on every rank:

* batches: ``optim.batch_size`` is the GLOBAL batch. Every rank draws the same shuffled order (and the
  same augmentation numbers) from the seeded generator and takes its contiguous slice of each global
  batch (:func:`shard`), so N processes see exactly the batches one process would.
* gradients: DDP all-reduces them during ``backward()``, before ``optimizer.step()``; HALO's fused
  update runs in a pre-step hook on those averaged gradients, so weights, λ and momentum buffers get the
  same update on every rank. The loss is scaled so the average over ranks is the mean over the global
  batch even when the last batch does not split evenly.
* BatchNorm: on CUDA the model's BatchNorm layers become ``SyncBatchNorm`` (batch statistics over the
  global batch, as in single-process training; without it each GPU normalises with its small local
  batch). On the CPU (gloo) SyncBatchNorm is not available: statistics are per rank, and DDP (by
  default) hands rank 0's running statistics to every rank at each forward; at the end of
  every epoch all buffers are broadcast from rank 0 explicitly, so evaluation, checkpoints and pruning
  see one model.
* files: only rank 0 writes (run directory, metrics, checkpoints, results); the others wait at a barrier.

With ``optim.parallel = "fsdp"`` the model is sharded instead (:func:`shard_model`, FSDP2's
``fully_shard``): each process holds 1/N of every weight, its gradient and optimizer state, and of HALO's
λ (built on the sharded model). Batches, loss scaling and BatchNorm statistics are as above (FSDP2
averages the gradients as DDP does); checkpoints are sharded (every process writes its part, see
:mod:`haloprune.training.fsdp`) and the finished model is gathered into one ordinary ``model.pt``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from haloprune.core.sharded import has_sharded, is_sharded

__all__ = [
    "World",
    "barrier",
    "broadcast_buffers",
    "on_main",
    "setup",
    "shard",
    "shard_model",
    "teardown",
    "world",
    "wrap",
]

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes, and its GPU index on the node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The process group this process belongs to (a single process when none was set up)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def setup(device: str) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` describes (if any) and pick this rank's device.

    ``device`` is the config's: ``"cuda"`` becomes ``cuda:<LOCAL_RANK>``. Calling it again is harmless.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local if size > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    return world(), dev


def teardown(wait: bool = True) -> None:
    """Leave the process group (at the end of ``haloprune train``), once every process is there (``wait``):
    none leaves while another still waits on it. ``wait=False`` after an error: the others may never
    come (the launcher stops them).

    Release what holds the group first — a sharded model's parameters hold its device mesh: a gloo group
    still held when the interpreter exits can abort the process there (``terminate called without an
    active exception``) after a run that succeeded."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # what was released but sits in reference cycles (a penalty and its model)
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def shard(n: int, w: World) -> slice:
    """This rank's contiguous part of a global batch of ``n`` (sizes differ by at most one)."""
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (w.rank < extra))


def shard_model(model: nn.Module, device: torch.device, w: World) -> nn.Module:
    """``model`` sharded across ``w`` with FSDP2, in place (and returned): each block — a module whose
    class is in the model's ``_no_split_modules`` (Hugging Face models), else each member of an
    ``nn.ModuleList`` (a transformer's layers) — is one ``fully_shard`` unit, gathered only while it
    runs, and the model is the unit of what is left. Unchanged in one process."""
    if not w.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (w.size,))
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        blocks = [m for m in model.modules() if type(m).__name__ in names]
    else:
        blocks = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]
    for block in blocks:
        if any(True for _ in block.parameters()):
            fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def wrap(model: nn.Module, device: torch.device, w: World) -> nn.Module:
    """``model`` for training across ``w``: SyncBatchNorm on CUDA, then DDP (the model itself alone, or
    when it is sharded already: FSDP2 reduces the gradients itself)."""
    if not w.distributed or has_sharded(model):
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    # buffers (BatchNorm statistics) are synced from rank 0 at every forward: DDP's default
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, w: World) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, masks) to every rank; sharded ones (a sharded
    weight's mask) are each process's own part and stay."""
    if not w.distributed:
        return
    for buf in model.buffers():
        if is_sharded(buf):
            continue
        if buf.dtype == torch.bool:  # not every backend broadcasts bool
            tmp = buf.to(torch.uint8)
            dist.broadcast(tmp, 0)
            buf.copy_(tmp.bool())
        else:
            dist.broadcast(buf, 0)


def end_epoch(sums: torch.Tensor, model: nn.Module, w: World) -> None:
    """After a training epoch: the epoch's sums added over ranks (in place), one set of BatchNorm
    statistics (rank 0's). Nothing to do in one process."""
    if w.distributed:
        dist.all_reduce(sums)
        broadcast_buffers(model, w)


def barrier(w: World) -> None:
    """Wait for every rank."""
    if w.distributed:
        dist.barrier()


def on_main(w: World, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result — or the error it raised — to every rank, so a
    refused run directory stops all ranks with the same message instead of leaving them waiting."""
    if not w.distributed:
        return fn()
    box: list[object] = [None, None]
    if w.is_main:
        try:
            box[0] = fn()
        except Exception as err:
            box[1] = err
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]  # type: ignore[misc]
    return box[0]  # type: ignore[return-value]
