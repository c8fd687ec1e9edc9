"""What haloprune knows about layer types, in one place: which modules carry prunable weights, which
are convolutions or BatchNorm, and what a "group" (one output unit of a layer) is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CONV: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Modules whose weights are penalised and pruned like a Linear layer's by default.
LINEAR: tuple[type[nn.Module], ...] = (nn.Linear, nn.MultiheadAttention)
#: BatchNorm layers, including the ``SyncBatchNorm`` that distributed training on CUDA converts them to.
BATCHNORM: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: Layers whose cost (weights x positions) :func:`haloprune.pruning.count_cost` counts.
DENSE: tuple[type[nn.Module], ...] = (nn.Linear, *CONV)


class OutputGroups:
    """The output units of a list of parameters, one group per unit.

    A group is one output unit of a layer: row ``o`` of a ``Linear`` weight, or filter ``o`` of a ``Conv``
    weight (``weight[o]`` over in-channels × kernel). When the layer's bias is in ``names`` too, ``bias[o]``
    joins its group. Parameters are named by dotted name, as everywhere in haloprune.
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> None:
        self.names, self.shapes = list(names), [tuple(s) for s in shapes]
        index = {n: i for i, n in enumerate(self.names)}
        # (index of the weight, index of its bias or None) per layer, in the order of ``names``.
        self.layers: list[tuple[int, int | None]] = []
        for i, name in enumerate(self.names):
            if name == "weight" or name.endswith(".weight"):
                self.layers.append((i, index.get(name[: -len("weight")] + "bias")))
        for i, b in self.layers:
            if b is not None and self.shapes[b] != (self.shapes[i][0],):
                raise ValueError(f"bias {self.names[b]!r} does not match its weight's output units")

    @property
    def counts(self) -> list[int]:
        """Number of groups (output units) per layer."""
        return [self.shapes[i][0] for i, _ in self.layers]

    @property
    def num_groups(self) -> int:
        return sum(self.counts)

    @property
    def sizes(self) -> list[int]:
        """Number of scalars in one group, per layer (fan-in, plus one with the bias)."""
        out = []
        for i, b in self.layers:
            fan_in = 1
            for d in self.shapes[i][1:]:
                fan_in *= d
            out.append(fan_in + (b is not None))
        return out

    def weight_names(self) -> list[str]:
        return [self.names[i] for i, _ in self.layers]

    def bias_names(self) -> list[str | None]:
        return [self.names[b] if b is not None else None for _, b in self.layers]

    def norms(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``||w_g||_2`` per layer, one entry per output unit; ``tensors`` in the order of ``names``.

        :func:`torch.linalg.vector_norm` has the finite subgradient 0 at an all-zero group and is exact
        elsewhere (no smoothing ε).
        """
        out = []
        for i, b in self.layers:
            w = tensors[i].reshape(tensors[i].shape[0], -1)
            if b is not None:
                w = torch.cat([w, tensors[b].unsqueeze(1).to(w.dtype)], dim=1)
            out.append(torch.linalg.vector_norm(w, ord=2, dim=1))
        return out
