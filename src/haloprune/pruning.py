"""One-shot magnitude pruning: scores → masks at an exact sparsity → masks attached to the model.

Sparsity is the fraction of *prunable* weights (see :mod:`haloprune.selection`; by default the weights
of Linear and Conv layers, not biases) that are zero. Asking for sparsity ``s`` over ``N`` weights
prunes exactly ``round(s · N)`` of them (per layer for :func:`layerwise_magnitude_prune`). Ties are
broken deterministically: among equal scores the weight that comes first (module order, then flat index)
is pruned first. Already-masked weights always count as pruned first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .masks import attach_mask, get_masks
from .selection import Scope, select_parameters, unwrap


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def magnitude_scores(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """|w| for each named parameter; weights already masked out score -inf (pruned first)."""
    model = unwrap(model)
    masks = get_masks(model)
    scores = {}
    for n in names:
        s = model.get_parameter(n).detach().abs().float()
        if n in masks:
            s = s.masked_fill(~masks[n], float("-inf"))
        scores[n] = s
    return scores


def _keep_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Flat bool mask keeping all but the ``n_prune`` lowest scores (stable: ties → lower index first)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        order = torch.sort(scores.flatten(), stable=True).indices
        keep[order[:n_prune]] = False
    return keep


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float, *, per_layer: bool = False):
    """Masks that prune exactly ``round(sparsity · N)`` of the scored weights, globally or per layer."""
    _check_sparsity(sparsity)
    if per_layer:
        return {n: _keep_mask(s, round(sparsity * s.numel())).view_as(s) for n, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = _keep_mask(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


def _prune(model: nn.Module, sparsity: float, per_layer: bool, scope: Scope, include_bias: bool):
    names = select_parameters(model, scope=scope, include_bias=include_bias)
    masks = masks_from_scores(magnitude_scores(model, names), sparsity, per_layer=per_layer)
    for n, m in masks.items():
        attach_mask(model, n, m)
    return masks


def global_magnitude_prune(
    model: nn.Module, sparsity: float, *, scope: Scope = "all", include_bias: bool = False
) -> dict[str, torch.Tensor]:
    """Prune the smallest-|w| weights across all prunable layers together, in place; returns the masks."""
    return _prune(model, sparsity, False, scope, include_bias)


def layerwise_magnitude_prune(
    model: nn.Module, sparsity: float, *, scope: Scope = "all", include_bias: bool = False
) -> dict[str, torch.Tensor]:
    """Prune the same fraction of smallest-|w| weights in every prunable layer, in place."""
    return _prune(model, sparsity, True, scope, include_bias)


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


def sparsity_report(
    model: nn.Module, *, scope: Scope = "all", include_bias: bool = False
) -> list[LayerSparsity]:
    """Per-layer parameters / nonzeros / sparsity of the prunable weights, then a ``total`` row."""
    model = unwrap(model)
    rows = []
    for n in select_parameters(model, scope=scope, include_bias=include_bias):
        p = model.get_parameter(n)
        rows.append(LayerSparsity(n, tuple(p.shape), p.numel(), int(torch.count_nonzero(p).item())))
    rows.append(LayerSparsity("total", (), sum(r.params for r in rows), sum(r.nonzero for r in rows)))
    return rows


def format_sparsity_report(rows: Sequence[LayerSparsity]) -> str:
    """A markdown table of :func:`sparsity_report`."""
    lines = ["| layer | shape | params | nonzero | sparsity |", "|---|---|---:|---:|---:|"]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        lines.append(f"| {r.name} | {shape} | {r.params:,} | {r.nonzero:,} | {100 * r.sparsity:.2f}% |")
    return "\n".join(lines)
