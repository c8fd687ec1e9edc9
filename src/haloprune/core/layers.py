"""What haloprune knows about layer types, in one place: which modules carry prunable weights, which
are convolutions or BatchNorm, and what a "group" (one output unit of a layer) is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

CONV: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Modules whose weights are penalised and pruned like a Linear layer's by default.
LINEAR: tuple[type[nn.Module], ...] = (nn.Linear, nn.MultiheadAttention)
#: BatchNorm layers, including the ``SyncBatchNorm`` that distributed training on CUDA converts them to.
BATCHNORM: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: Layers whose cost (weights x positions) :func:`haloprune.pruning.count_cost` counts.
DENSE: tuple[type[nn.Module], ...] = (nn.Linear, *CONV)


@dataclass(frozen=True)
class UnitPart:
    """Where the units of a block live in one parameter: unit ``u`` is the indices
    ``[offset + u * size, offset + (u + 1) * size)`` along ``dim``."""

    param: str  # dotted name: relative to the declaring module in ``Units``, absolute in ``OutputGroups``
    dim: int
    offset: int
    size: int


@dataclass(frozen=True)
class Units:
    """Removable units a module declares through ``structured_units()`` (an attention's heads, an MLP's
    hidden neurons): ``count`` units of one ``kind``, each the union of its slices in ``parts``. Such a
    module also has ``remove_units(kind, keep)``, which :func:`haloprune.pruning.slim` calls."""

    kind: str
    count: int
    parts: tuple[UnitPart, ...]


def declared_units(model: nn.Module, names: Sequence[str]) -> list[tuple[str, Units]]:
    """``(block name, units)`` for every unit kind the modules of ``model`` declare, in module order, with
    absolute parameter names and only the parts whose parameter is in ``names`` (kinds left with no part
    are skipped). The block name is ``<module>.<kind>s``."""
    wanted = set(names)
    out = []
    for mod_name, module in model.named_modules():
        declare = getattr(module, "structured_units", None)
        if declare is None:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for units in declare():
            parts = tuple(
                UnitPart(prefix + p.param, p.dim, p.offset, p.size)
                for p in units.parts
                if prefix + p.param in wanted
            )
            if parts:
                out.append((f"{prefix}{units.kind}s", Units(units.kind, units.count, parts)))
    return out


class OutputGroups:
    """The structured groups of a list of parameters, in blocks of groups.

    By default a group is one output unit of a layer: row ``o`` of a ``Linear`` weight, or filter ``o`` of a
    ``Conv`` weight (``weight[o]`` over in-channels × kernel); when the layer's bias is in ``names`` too,
    ``bias[o]`` joins its group; each layer is a block. Modules that declare their own units (``units``,
    from :func:`declared_units`: an attention head is its q/k/v rows and its output-projection columns, an
    MLP neuron its ``fc1`` row and ``fc2`` column) give one block per kind, before the layers; the
    parameters they cover are not grouped again by rows. Parameters are named by dotted name, as everywhere
    in haloprune.
    """

    def __init__(
        self,
        names: Sequence[str],
        shapes: Sequence[tuple[int, ...]],
        units: Sequence[tuple[str, Units]] = (),
    ) -> None:
        self.names, self.shapes = list(names), [tuple(s) for s in shapes]
        index = {n: i for i, n in enumerate(self.names)}
        claimed = {p.param for _, u in units for p in u.parts}
        # per block: its name, number of groups, and parts as (parameter index, dim, offset, size)
        self.blocks: list[tuple[str, int, list[tuple[int, int, int, int]]]] = []
        for block, u in units:
            self.blocks.append((block, u.count, [(index[p.param], p.dim, p.offset, p.size) for p in u.parts]))
        self.num_declared = len(self.blocks)  # the first blocks are declared units, the rest layers
        for i, name in enumerate(self.names):
            if name in claimed or not (name == "weight" or name.endswith(".weight")):
                continue
            parts = [(i, 0, 0, 1)]
            b = index.get(name[: -len("weight")] + "bias")
            if b is not None and self.names[b] not in claimed:
                if self.shapes[b] != (self.shapes[i][0],):
                    raise ValueError(f"bias {self.names[b]!r} does not match its weight's output units")
                parts.append((b, 0, 0, 1))
            self.blocks.append((name, self.shapes[i][0], parts))
        for block, count, parts in self.blocks:
            for i, dim, offset, size in parts:
                if offset + count * size > self.shapes[i][dim]:
                    raise ValueError(
                        f"{block}: {count} units do not fit in {self.names[i]!r} {self.shapes[i]}"
                    )

    @property
    def counts(self) -> list[int]:
        """Number of groups per block."""
        return [count for _, count, _ in self.blocks]

    @property
    def num_groups(self) -> int:
        return sum(self.counts)

    @property
    def sizes(self) -> list[int]:
        """Number of scalars in one group, per block (a layer's fan-in, plus one with the bias)."""
        out = []
        for _, _, parts in self.blocks:
            n = 0
            for i, dim, _, size in parts:
                rest = 1
                for d, extent in enumerate(self.shapes[i]):
                    rest *= extent if d != dim else 1
                n += size * rest
            out.append(n)
        return out

    def block_names(self) -> list[str]:
        """A name per block: the layer's weight, or ``<module>.<kind>s`` for declared units."""
        return [name for name, _, _ in self.blocks]

    def _rows(self, t: torch.Tensor, count: int, dim: int, offset: int, size: int) -> torch.Tensor:
        """``(count, -1)``: the scalars of each unit in ``t``."""
        return t.movedim(dim, 0)[offset : offset + count * size].reshape(count, -1)

    def norms(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``||w_g||_2`` per block, one entry per group; ``tensors`` in the order of ``names``.

        :func:`torch.linalg.vector_norm` has the finite subgradient 0 at an all-zero group and is exact
        elsewhere (no smoothing ε).
        """
        out = []
        for _, count, parts in self.blocks:
            rows = [self._rows(tensors[i], count, dim, off, size) for i, dim, off, size in parts]
            dtype = torch.promote_types(rows[0].dtype, rows[-1].dtype)
            out.append(torch.linalg.vector_norm(torch.cat([r.to(dtype) for r in rows], dim=1), ord=2, dim=1))
        return out

    def masks(self, keep: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bool masks (shaped like each parameter) that keep the groups ``keep`` marks (one bool tensor per
        block), for every parameter the blocks cover."""
        out: dict[str, torch.Tensor] = {}
        for (_, count, parts), k in zip(self.blocks, keep, strict=True):
            for i, dim, off, size in parts:
                name = self.names[i]
                mask = out.get(name)
                if mask is None:
                    mask = torch.ones(self.shapes[i], dtype=torch.bool, device=k.device)
                view = mask.movedim(dim, 0)
                view[off : off + count * size] &= k.repeat_interleave(size).view(
                    -1, *([1] * (view.dim() - 1))
                )
                out[name] = mask
        return out
