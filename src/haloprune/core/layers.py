"""What haloprune knows about layer types, in one place: which modules carry prunable weights, which
are convolutions or BatchNorm, along which axis a weight holds its outputs, and what a "group" (one output
unit of a layer) is.

Layers of optional packages (Hugging Face ``transformers``' ``Conv1D``, the linear layer of GPT-2 and its
relatives, whose weight is stored ``(in, out)``) are recognised by where their class lives, looked up in
``sys.modules`` when a model is inspected: a module of that class exists only if its package was imported,
so haloprune never imports an optional package to recognise its layers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from haloprune.core.hf_units import FOREIGN_UNITS
from haloprune.core.units import UnitPart, Units, UnitSource

__all__ = ["UnitPart", "Units"]  # defined in haloprune.core.units; named here as before

CONV: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Transposed convolutions: weight ``(in, out / groups, *kernel)``, outputs on axis 1.
CONV_TRANSPOSE: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: Modules whose weights are penalised and pruned like a Linear layer's by default (with the optional
#: packages' layers of :data:`FOREIGN_LINEAR`).
LINEAR: tuple[type[nn.Module], ...] = (nn.Linear, nn.MultiheadAttention)
#: Linear layers of optional packages, as ``(module, class name, axis of the outputs in its weight)``.
FOREIGN_LINEAR: tuple[tuple[str, str, int], ...] = (("transformers.pytorch_utils", "Conv1D", 1),)
#: BatchNorm layers, including the ``SyncBatchNorm`` that distributed training on CUDA converts them to.
BATCHNORM: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: Layers whose cost (weights x positions) :func:`haloprune.pruning.count_cost` counts (with the optional
#: packages' linear layers).
DENSE: tuple[type[nn.Module], ...] = (nn.Linear, *CONV, *CONV_TRANSPOSE)

LayerKind = Literal["linear", "conv"]


def _foreign_linear() -> list[tuple[type, int]]:
    """The classes of :data:`FOREIGN_LINEAR` whose package is imported, with their output axis."""
    out = []
    for module_name, class_name, dim in FOREIGN_LINEAR:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            out.append((cls, dim))
    return out


def layer_kind(module: nn.Module) -> LayerKind | None:
    """``"linear"`` (Linear, attention, ``transformers``' Conv1D), ``"conv"`` (Conv and ConvTranspose) or
    ``None``: the layers whose weights haloprune penalises and prunes by default."""
    if isinstance(module, LINEAR):
        return "linear"
    if isinstance(module, CONV + CONV_TRANSPOSE):
        return "conv"
    if any(isinstance(module, cls) for cls, _ in _foreign_linear()):
        return "linear"
    return None


def is_dense_layer(module: nn.Module) -> bool:
    """A layer with one ``weight`` applied at every position: what :func:`~haloprune.pruning.count_cost`
    counts (Linear, Conv, ConvTranspose, ``transformers``' Conv1D)."""
    return isinstance(module, DENSE) or any(isinstance(module, cls) for cls, _ in _foreign_linear())


def output_dim(module: nn.Module) -> int:
    """The axis of ``module.weight`` that indexes the layer's outputs: 0 for ``(out, in, ...)`` (Linear,
    Conv, an attention's projections), 1 for ConvTranspose ``(in, out / groups, ...)`` and Conv1D
    ``(in, out)``."""
    if isinstance(module, CONV_TRANSPOSE):
        return 1
    for cls, dim in _foreign_linear():
        if isinstance(module, cls):
            return dim
    return 0


def output_units(module: nn.Module) -> int:
    """How many outputs (features, channels) a :func:`is_dense_layer` layer has."""
    w = module.weight
    if isinstance(module, CONV_TRANSPOSE):
        return w.shape[1] * module.groups
    return w.shape[output_dim(module)]


def units_of(module: nn.Module) -> UnitSource | None:
    """What declares the removable units of ``module``: the module itself if it has
    ``structured_units()`` (haloprune's ViT), an adapter for a known module of an optional package
    (:data:`~haloprune.core.hf_units.FOREIGN_UNITS`: GPT-2's attention and MLP), else ``None``."""
    if hasattr(module, "structured_units"):
        return module  # type: ignore[return-value]
    for (module_name, class_name), adapter in FOREIGN_UNITS.items():
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and isinstance(module, cls):
            return adapter(module)
    return None


def declared_units(model: nn.Module, names: Sequence[str]) -> list[tuple[str, Units]]:
    """``(block name, units)`` for every unit kind the modules of ``model`` declare, in module order, with
    absolute parameter names and only the parts whose parameter is in ``names`` (kinds left with no part
    are skipped). The block name is ``<module>.<kind>s``."""
    wanted = set(names)
    out = []
    for mod_name, module in model.named_modules():
        source = units_of(module)
        if source is None:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        for units in source.structured_units():
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
    ``Conv`` weight (``weight[o]`` over in-channels × kernel) — the slice ``o`` along the weight's output
    axis ``out_dims[i]`` (1 for a ConvTranspose or a ``transformers`` Conv1D, whose weights are stored
    in-first; see :func:`output_groups`, which reads the axes from the model); when the layer's bias is in
    ``names`` too,
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
        out_dims: Sequence[int] | None = None,
    ) -> None:
        self.names, self.shapes = list(names), [tuple(s) for s in shapes]
        dims = list(out_dims) if out_dims is not None else [0] * len(self.names)
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
            dim = dims[i]
            parts = [(i, dim, 0, 1)]
            b = index.get(name[: -len("weight")] + "bias")
            if b is not None and self.names[b] not in claimed:
                if self.shapes[b] != (self.shapes[i][dim],):
                    raise ValueError(f"bias {self.names[b]!r} does not match its weight's output units")
                parts.append((b, 0, 0, 1))
            self.blocks.append((name, self.shapes[i][dim], parts))
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


def output_groups(model: nn.Module, names: Sequence[str]) -> OutputGroups:
    """The :class:`OutputGroups` of the parameters ``names`` of ``model``: the units its modules declare,
    and each layer's output axis (:func:`output_dim`). A grouped ConvTranspose has no output unit along one
    axis of its weight and is refused."""
    shapes, dims = [], []
    for name in names:
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        shapes.append(tuple(model.get_parameter(name).shape))
        if isinstance(module, CONV_TRANSPOSE) and module.groups != 1:
            raise ValueError(
                f"{name}: a ConvTranspose with groups={module.groups} has no output units to group"
            )
        dims.append(output_dim(module) if attr == "weight" else 0)
    return OutputGroups(names, shapes, declared_units(model, names), dims)
