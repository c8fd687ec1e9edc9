"""Unstructured magnitude pruning: scores → masks at an exact budget → masks attached to the model.

Sparsity is the fraction of *prunable* weights (see :mod:`haloprune.core.params`; by default the
weights of Linear, Conv and attention layers, not biases) that are zero. Asking for sparsity ``s`` over
``N`` weights prunes exactly ``round(s · N)`` of them (per layer for :func:`layerwise_magnitude_prune`).
Ties are broken deterministically: among equal scores the weight that comes first (module order, then
flat index) is pruned first. Already-masked weights always count as pruned first.

``of="nonzero"`` reads a sparsity as a fraction of the weights that are not already zero (the HALO
reference's pruning scripts): with ``Z`` of ``N`` weights at zero, ``Z + round(s · (N − Z))`` are pruned.

A model sharded with FSDP2 (``fully_shard``) is pruned where it lies: every process scores its own shards,
the masks are exactly those of the unsharded model (:func:`haloprune.core.sharded.lowest`), and each is
sharded like its weight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Unpack

import torch
from torch import nn

from haloprune.core.params import SelectionArgs, require_parameters, select_parameters, unwrap
from haloprune.core.sharded import count_nonzero, is_sharded, layout, like, local, lowest, total_counts
from haloprune.pruning.masks import attach_masks, get_masks


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


OF = ("all", "nonzero")


def _n_prune(numel: int, zeros: Callable[[], int], sparsity: float, of: str) -> int:
    """How many of ``numel`` scored weights a sparsity prunes, ``zeros()`` of them zero or already masked
    (see the module doc for ``of``)."""
    if of == "all":
        return round(sparsity * numel)
    if of == "nonzero":
        z = zeros()
        return z + round(sparsity * (numel - z))
    raise ValueError(f"of must be one of {', '.join(map(repr, OF))}, got {of!r}")


def _zeros(scores: torch.Tensor) -> int:
    return int((scores <= 0).sum())  # exactly zero, or already masked (-inf)


def _keep_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Flat bool mask keeping all but the ``n_prune`` lowest scores (stable: ties → lower index first)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        order = torch.sort(scores.flatten(), stable=True).indices
        keep[order[:n_prune]] = False
    return keep


def masks_from_scores(
    scores: dict[str, torch.Tensor], sparsity: float, *, per_layer: bool = False, of: str = "all"
):
    """Masks that prune exactly ``round(sparsity · N)`` of the scored weights (``of="nonzero"``: see the
    module doc), globally or per layer."""
    _check_sparsity(sparsity)
    if any(is_sharded(s) for s in scores.values()):
        return _sharded_masks(scores, sparsity, per_layer, of)
    if per_layer:
        return {
            n: _keep_mask(s, _n_prune(s.numel(), lambda s=s: _zeros(s), sparsity, of)).view_as(s)
            for n, s in scores.items()
        }
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = _keep_mask(flat, _n_prune(flat.numel(), lambda: _zeros(flat), sparsity, of))
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = keep[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out


def _sharded_masks(
    scores: dict[str, torch.Tensor], sparsity: float, per_layer: bool, of: str
) -> dict[str, torch.Tensor]:
    """:func:`masks_from_scores` for scores sharded across processes (FSDP2): the same masks, each
    sharded like its scores."""
    names, tensors = list(scores), list(scores.values())
    where = layout(tensors, names)
    blocks = [local(s).flatten() for s in tensors]
    counted = [where.counts(s) for s in tensors]
    keep: list[torch.Tensor] = []
    for part in [[i] for i in range(len(names))] if per_layer else [list(range(len(names)))]:

        def zeros(part: list[int] = part) -> int:
            mine = sum(_zeros(blocks[i]) for i in part if counted[i])
            return total_counts([mine], where, blocks[0].device)[0]

        n = _n_prune(sum(tensors[i].numel() for i in part), zeros, sparsity, of)
        keep += lowest([blocks[i] for i in part], [counted[i] for i in part], n, where)
    return {n: like(k.view(local(s).shape), s) for n, k, s in zip(names, keep, tensors, strict=True)}


def _prune(
    model: nn.Module, sparsity: float, per_layer: bool, of: str, **selection: Unpack[SelectionArgs]
) -> dict[str, torch.Tensor]:
    names = require_parameters(model, "prune", **selection)
    masks = masks_from_scores(magnitude_scores(model, names), sparsity, per_layer=per_layer, of=of)
    attach_masks(model, masks)
    return masks


def global_magnitude_prune(
    model: nn.Module, sparsity: float, *, of: str = "all", **selection: Unpack[SelectionArgs]
) -> dict[str, torch.Tensor]:
    """Prune the smallest-|w| weights across all prunable layers together, in place; returns the masks.

    Prunable: see :mod:`haloprune.core.params` (Linear, Conv and attention weights by default; ``include``
    / ``exclude`` add or remove parameters by dotted-name glob). A parameter shared by several modules
    is pruned once. ``of="nonzero"``: ``sparsity`` is a fraction of the weights not already zero."""
    return _prune(model, sparsity, False, of, **selection)


def layerwise_magnitude_prune(
    model: nn.Module, sparsity: float, *, of: str = "all", **selection: Unpack[SelectionArgs]
) -> dict[str, torch.Tensor]:
    """Prune the same fraction of smallest-|w| weights in every prunable tensor, in place."""
    return _prune(model, sparsity, True, of, **selection)


@torch.no_grad()
def zero_small_weights(model: nn.Module, threshold: float, **selection: Unpack[SelectionArgs]) -> int:
    """Set the prunable weights with ``|w| < threshold`` to exactly zero, in place (the HALO reference
    counts such weights as zero); returns how many were not zero before."""
    model = unwrap(model)
    changed = 0
    for n in select_parameters(model, **selection):
        p = model.get_parameter(n)
        small = (p.abs() < threshold) & (p != 0)
        changed += count_nonzero(small, n)
        p.masked_fill_(small, 0.0)
    return changed
