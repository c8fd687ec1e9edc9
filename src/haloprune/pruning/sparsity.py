"""How sparse a model is: per-tensor parameters, nonzeros and sparsity of the prunable weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Unpack

from torch import nn

from haloprune.core.params import SelectionArgs, select_parameters, unwrap
from haloprune.core.sharded import count_nonzero


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    shape: tuple[int, ...]
    params: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "shape": list(self.shape), "sparsity": self.sparsity}


def sparsity_report(model: nn.Module, **selection: Unpack[SelectionArgs]) -> list[LayerSparsity]:
    """Per-tensor parameters / nonzeros / sparsity of the prunable weights, then a ``total`` row (a
    parameter shared by several modules is one row, counted once; a model sharded with FSDP2 is counted
    whole, every process getting the same report)."""
    model = unwrap(model)
    rows = []
    names = select_parameters(model, **selection)
    for n in names:
        p = model.get_parameter(n)
        rows.append(LayerSparsity(n, tuple(p.shape), p.numel(), count_nonzero(p, n)))
    rows.append(LayerSparsity("total", (), sum(r.params for r in rows), sum(r.nonzero for r in rows)))
    return rows


def format_sparsity_report(rows: Sequence[LayerSparsity]) -> str:
    """A markdown table of :func:`sparsity_report`."""
    lines = ["| layer | shape | params | nonzero | sparsity |", "|---|---|---:|---:|---:|"]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        lines.append(f"| {r.name} | {shape} | {r.params:,} | {r.nonzero:,} | {100 * r.sparsity:.2f}% |")
    return "\n".join(lines)
