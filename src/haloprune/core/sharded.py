"""Parameters sharded across processes: the one place that knows how FSDP2 (``fully_shard``) holds them.

Under FSDP2 each parameter is a ``DTensor`` whose rows are split across the processes of a device mesh
(``Shard(0)``; with HSDP also ``Replicate()`` over a second mesh dimension): each process holds a
contiguous block of the rows, the first processes one row more when they do not split evenly, and the
blocks in rank order are the tensor in its flat (row-major) order. Everything haloprune computes over
sharded weights works on each process's local block and reduces only what must be global (counts, sums,
the threshold of a global selection), so no process ever holds a whole weight.

``Layout`` says how a list of tensors is spread (the process group its shards span, this process's
place in it); :func:`lowest` picks exactly the ``n`` lowest scores across all processes — the same
entries a stable sort of the unsharded, concatenated scores picks (ties: earlier tensor first, then
lower flat index) — with a few scalar all-reduces and one small all-gather. A tensor that is not sharded
in a sharded run (a parameter left outside ``fully_shard``) is whole and identical on every process: it
is counted once (by the group's first process) and every process decides its entries alike.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from haloprune.core.errors import HaloPruneError

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = [
    "Layout",
    "count_nonzero",
    "gathered",
    "gathered_state",
    "has_sharded",
    "is_sharded",
    "kth_smallest",
    "layout",
    "like",
    "local",
    "lowest",
    "refuse_sharded",
    "reshard",
    "shard_like",
    "summed",
    "total",
    "total_counts",
]


def is_sharded(t: Any) -> bool:
    """True for a ``DTensor`` (a parameter of a ``fully_shard``-ed module). Free when no ``DTensor`` was
    ever made: ``torch.distributed.tensor`` (slow to import) is never imported here."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's block of ``t`` (``t`` itself when it is not sharded). Differentiable, and the same
    memory: an in-place change of the block changes ``t``."""
    return t.to_local() if is_sharded(t) else t


def like(block: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``block`` (this process's part, shaped like ``local(ref)``) as a tensor sharded exactly like
    ``ref`` (``block`` itself when ``ref`` is not sharded)."""
    if not is_sharded(ref):
        return block
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        block, ref.device_mesh, ref.placements, shape=ref.shape, stride=ref.stride(), run_check=False
    )


def shard_like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The whole tensor ``full`` (the same on every process, e.g. read from a checkpoint) sharded exactly
    like ``ref``, without communication: each process keeps its block (``full`` itself when ``ref`` is not
    sharded, or ``full`` is sharded already)."""
    if not is_sharded(ref) or is_sharded(full):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(local(ref).device), ref.device_mesh, ref.placements, src_data_rank=None)


def gathered(t: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded ``t`` on every process (a collective call); ``t`` itself when not sharded."""
    return t.full_tensor() if is_sharded(t) else t


def gathered_state(state: dict[str, Any], keep: bool = True) -> dict[str, Any]:
    """A state dict with each sharded tensor gathered whole (a collective call, one tensor at a time);
    with ``keep=False`` (a process that will not use it) nothing is kept: ``{}``."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        whole = gathered(value) if isinstance(value, torch.Tensor) else value
        if keep:
            out[key] = whole
    return out


@dataclass(frozen=True)
class Layout:
    """How a list of tensors is spread: ``group``, the processes their shards span (``None``: every
    tensor is whole here), and this process's ``rank`` among the ``size`` of them."""

    group: dist.ProcessGroup | None = None
    rank: int = 0
    size: int = 1

    @property
    def sharded(self) -> bool:
        return self.group is not None

    def counts(self, t: torch.Tensor) -> bool:
        """Whether this process counts ``t``'s local entries: always its shard of a sharded tensor; a
        whole tensor only on the group's first process (it is the same everywhere)."""
        return is_sharded(t) or self.rank == 0


def _shard_dim(name: str, t: DTensor) -> int | None:
    """The mesh dimension over which ``t`` is split by rows; a clear error for any other layout."""
    from torch.distributed.tensor import Replicate, Shard

    dims = []
    for i, p in enumerate(t.placements):
        if isinstance(p, Shard) and p.dim == 0 and type(p) is Shard:
            dims.append(i)
        elif not isinstance(p, Replicate):
            raise HaloPruneError(
                f"{name} is laid out as {tuple(t.placements)}: haloprune supports FSDP2's row sharding "
                "(Shard(0), with Replicate() for HSDP), not this layout"
            )
    if len(dims) > 1:
        raise HaloPruneError(f"{name} is sharded over {len(dims)} mesh dimensions: haloprune supports one")
    return dims[0] if dims else None


def layout(tensors: Sequence[torch.Tensor], names: Sequence[str]) -> Layout:
    """The :class:`Layout` of ``tensors`` (``names``: for the error messages). All sharded ones must
    span the same processes: one global selection or sum needs one group."""
    found: tuple[dist.ProcessGroup, str] | None = None
    for name, t in zip(names, tensors, strict=True):
        if not is_sharded(t):
            continue
        dim = _shard_dim(name, t)
        if dim is None:
            continue  # replicated on every process: a whole tensor
        group = t.device_mesh.get_group(dim)
        if found is None:
            found = (group, name)
        elif group is not found[0]:
            raise HaloPruneError(
                f"{name} and {found[1]} are sharded over different process groups: haloprune needs one"
            )
    if found is None:
        return Layout()
    group = found[0]
    return Layout(group, dist.get_rank(group), dist.get_world_size(group))


def total(values: torch.Tensor, where: Layout) -> torch.Tensor:
    """``values`` summed over the processes of ``where`` (each process gives its own part; unchanged when
    nothing is sharded). Not differentiable."""
    if where.group is None:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, group=where.group)
    return out


def total_counts(counts: Sequence[int], where: Layout, device: torch.device | None = None) -> list[int]:
    """Integer ``counts`` summed over the processes of ``where`` (``device``: the process group's, for
    NCCL); unchanged, with no tensor made, when nothing is sharded."""
    if where.group is None:
        return list(counts)
    return [int(c) for c in total(torch.tensor(list(counts), dtype=torch.int64, device=device), where)]


def summed(x: torch.Tensor, where: Layout) -> torch.Tensor:
    """The 0-dim ``x`` summed over the processes of ``where``, differentiable as this process's ``x``:
    each process's own part is what its gradient flows to (the others' parts are constants to it)."""
    if where.group is None:
        return x
    return x + (total(x.detach().reshape(1), where).reshape(()) - x.detach())


def has_sharded(model: torch.nn.Module) -> bool:
    """True when any parameter of ``model`` is sharded (the model, or part of it, is ``fully_shard``-ed)."""
    return any(is_sharded(p) for p in model.parameters())


def reshard(model: torch.nn.Module) -> None:
    """Put back the sharded parameters of every ``fully_shard``-ed module of ``model``: after a forward
    without backward (evaluation) FSDP2 leaves the unsharded ones of the root module in their place,
    so ``model.parameters()`` would not be what the optimizer holds. Nothing to do otherwise."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        return
    for module in model.modules():
        if isinstance(module, fsdp.FSDPModule):
            module.reshard()


def refuse_sharded(model: torch.nn.Module, what: str) -> None:
    """One clear error if ``model`` has sharded parameters (``what`` works on whole models only)."""
    if has_sharded(model):
        raise HaloPruneError(
            f"{what} works on an unsharded model: gather the sharded one first "
            "(haloprune.training.fsdp.full_state_dict, loaded into the unsharded model)"
        )


def count_nonzero(t: torch.Tensor, name: str = "tensor") -> int:
    """The nonzero entries of ``t`` over all processes (each shard counted once)."""
    block = local(t).detach()
    return total_counts([int(torch.count_nonzero(block))], layout([t], [name]), block.device)[0]


def _keys(scores: torch.Tensor) -> torch.Tensor:
    """int64 keys in the order of the float ``scores`` (−0.0 read as +0.0: equal floats, equal keys)."""
    x = scores.detach() + 0.0
    if x.dtype == torch.float64:
        bits = x.view(torch.int64)
        return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFFFFFFFFFF)
    bits = x.float().view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def _cut(keys: Sequence[torch.Tensor], n: int, where: Layout) -> int:
    """The ``n``-th smallest (1-based) of the keys of all processes together (``keys``: this process's,
    those it counts): bisection over the key range, this process's keys sorted once, one scalar
    all-reduce per step (at most 64)."""
    ordered = torch.sort(torch.cat(list(keys))).values if keys else torch.zeros(0, dtype=torch.int64)
    dev = ordered.device
    smallest, largest = (int(ordered[0]), int(ordered[-1])) if len(ordered) else (2**63 - 1, -(2**63) + 1)
    bounds = torch.tensor([-smallest, largest], dtype=torch.int64, device=dev)
    if where.group is not None:
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX, group=where.group)
    lo, hi = -int(bounds[0]), int(bounds[1])  # the global smallest and largest key
    count = torch.zeros((), dtype=torch.int64, device=dev)
    while lo < hi:  # the smallest key with at least n entries at or below it
        mid = (lo + hi) // 2
        count.fill_(int(torch.searchsorted(ordered, mid, right=True)))
        if where.group is not None:
            dist.all_reduce(count, group=where.group)
        if int(count) >= n:
            hi = mid
        else:
            lo = mid + 1
    return lo


def kth_smallest(
    values: torch.Tensor, k: int, near: float | None = None, where: Layout | None = None
) -> float:
    """The ``k``-th smallest (1-based) of the flat float ``values``: exactly ``values.kthvalue(k).values``;
    with ``where`` sharded, of all processes' ``values`` together (each gives its block), without gathering
    them. ``near``, a guess (target mode's last cut, which moves little from one step to the next): the
    entries are counted on either side of a band around it and only those inside are selected among (a
    band that misses is widened 4x, 3 times, then the whole is selected among), so a good guess makes it
    a few elementwise passes. The guess changes the cost, never the answer."""
    where = where or Layout()

    def select(among: torch.Tensor, j: int) -> float:  # the j-th smallest of ``among`` (all processes')
        if where.group is None:
            return float(among.kthvalue(j).values)
        return _value_of(_cut([_keys(among)], j, where), values.dtype)

    def counts(*masks: torch.Tensor) -> list[int]:  # each mask's True entries, over all processes
        return total_counts([int(torch.count_nonzero(m)) for m in masks], where, values.device)

    if near is not None and math.isfinite(near):
        near = float(torch.tensor(near, dtype=values.dtype))  # as the entries hold it (0.3 in float32)
        below, upto = counts(values < near, values <= near)
        if below < k <= upto:
            return near
        width = max(abs(near), 1e-30) * _BAND
        for _ in range(3):
            if k <= below:  # the answer lies below near
                lo = near - width
                (under,) = counts(values < lo)
                if under < k:
                    return select(values[(values >= lo) & (values < near)], k - under)
            else:
                hi = near + width
                (within,) = counts(values <= hi)
                if k <= within:
                    return select(values[(values > near) & (values <= hi)], k - upto)
            width *= 4
    return select(values, k)


_BAND = 0.1  # kth_smallest's first band: ±10% around the guess


def _value_of(key: int, dtype: torch.dtype) -> float:
    """The float whose key (:func:`_keys`) is ``key``."""
    if dtype == torch.float64:
        bits = key if key >= 0 else key ^ 0x7FFFFFFFFFFFFFFF
        return float(torch.tensor([bits], dtype=torch.int64).view(torch.float64))
    bits = key if key >= 0 else key ^ 0x7FFFFFFF
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))


def lowest(
    scores: Sequence[torch.Tensor], counted: Sequence[bool], n: int, where: Layout
) -> list[torch.Tensor]:
    """Which of the local ``scores`` (one flat float tensor per tensor, this process's block) are among the
    ``n`` lowest of all processes' scores together: one flat bool tensor each, True where the entry is
    *not* among them (kept). ``counted[i]``: whether this process counts tensor ``i`` (see
    :meth:`Layout.counts`; a tensor no process counts is decided as the first process decides it).

    Exactly the entries a stable sort of the unsharded scores, concatenated in order, puts first: the
    ``n``-th lowest value is found by bisection over the scores' bit patterns (each process's keys sorted
    once, then one scalar all-reduce per bit), and of the entries equal to it the earliest are taken,
    tensor by tensor, each tensor's blocks in rank order."""
    keys = [_keys(s) for s in scores]
    if n <= 0:
        return [torch.ones_like(k, dtype=torch.bool) for k in keys]
    cut = _cut([k for k, c in zip(keys, counted, strict=True) if c], n, where)
    dev = keys[0].device
    below = [int(torch.count_nonzero(k < cut)) if c else 0 for k, c in zip(keys, counted, strict=True)]
    equal = [int(torch.count_nonzero(k == cut)) if c else 0 for k, c in zip(keys, counted, strict=True)]
    table = torch.tensor([sum(below), *equal], dtype=torch.int64, device=dev)
    if where.group is not None:
        gathered = [torch.zeros_like(table) for _ in range(where.size)]
        dist.all_gather(gathered, table, group=where.group)
    else:
        gathered = [table]
    rows = [g.tolist() for g in gathered]
    left = n - sum(r[0] for r in rows)  # entries equal to the cut still to take
    out = []
    for i, k in enumerate(keys):
        take = 0  # of this tensor's entries equal to the cut, how many this process takes
        for r, row in enumerate(rows):
            share = min(row[1 + i], left)
            left -= share
            if r == (where.rank if counted[i] else 0):  # a whole tensor: as its counting process does
                take = share
        keep = k > cut
        keep[torch.nonzero(k == cut).flatten()[take:]] = True
        out.append(keep)
    return out
