"""Structured pruning: whole output neurons / filters, ranked by group norm across layers, to a target
number of parameters or multiply-accumulates of the slimmed model (:func:`haloprune.pruning.slim.slim`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from haloprune.core.layers import OutputGroups, output_groups
from haloprune.core.params import Scope, select_parameters, unwrap
from haloprune.core.sharded import refuse_sharded
from haloprune.pruning.cost import count_cost
from haloprune.pruning.masks import attach_mask, get_masks
from haloprune.pruning.slim import slim

GroupNorm = Literal["rms", "layer", "l2"]


def group_scores(
    model: nn.Module,
    *,
    scope: Scope = "all",
    include_bias: bool = False,
    normalize: GroupNorm = "rms",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> tuple[OutputGroups, list[torch.Tensor]]:
    """The output units (groups) of the prunable layers and one score per unit, per layer.

    Scores make groups of different layers comparable, so one global ranking can be used:

    * ``"rms"`` (default): ``||w_g||_2 / sqrt(n_g)``, the root-mean-square weight of the unit. A raw L2
      norm grows with the fan-in ``n_g`` (784 for a LeNet-300-100 ``fc1`` row, 100 for ``fc3``), so it
      would prune the layers with small fan-in first whatever their weights; the RMS is the norm *per
      element*, on the same scale as the per-weight magnitudes of unstructured pruning.
    * ``"layer"``: ``||w_g||_2`` divided by the mean norm of its layer's units (scale-free per layer).
    * ``"l2"``: the raw norm (what the group lasso penalises, unweighted).

    Masked weights count as zero.
    """
    model = unwrap(model)
    names = select_parameters(model, scope=scope, include_bias=include_bias, include=include, exclude=exclude)
    params = [model.get_parameter(n).detach().float() for n in names]
    groups = output_groups(model, names)
    norms = groups.norms(params)
    if normalize == "rms":
        return groups, [n / size**0.5 for n, size in zip(norms, groups.sizes, strict=True)]
    if normalize == "layer":
        return groups, [n / n.mean().clamp_min(torch.finfo(n.dtype).tiny) for n in norms]
    if normalize == "l2":
        return groups, norms
    raise ValueError(f"normalize must be 'rms', 'layer' or 'l2', got {normalize!r}")


def _attach_group_masks(model: nn.Module, groups: OutputGroups, keep: list[torch.Tensor]) -> list[str]:
    """Mask the groups ``keep`` drops (and keep existing masks); returns the masked parameters' names."""
    existing = get_masks(model)
    new = groups.masks(keep)
    for n, mask in new.items():
        mask = mask.to(model.get_parameter(n).device)
        attach_mask(model, n, mask & existing[n] if n in existing else mask)
    return list(new)


def group_prune(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    params: int | None = None,
    macs: int | None = None,
    scope: Scope = "all",
    include_bias: bool = False,
    normalize: GroupNorm = "rms",
    keep_output_layer: bool = True,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune whole output neurons / filters, in place, until the *slimmed* model fits the budget.

    Units are ranked globally by :func:`group_scores` (lowest first) and the fewest lowest units are
    pruned such that :func:`haloprune.pruning.slim.slim` of the result has at most ``params`` weights and/or
    ``macs`` multiply-accumulates per input (counted densely: what the small model really costs; a pruned
    unit also removes the next layer's columns that read it). Give ``params``, ``macs`` or both.

    A pruned unit's weight row (and bias, with ``include_bias``) is masked in the ordinary mask format
    (:mod:`haloprune.pruning.masks`), so ``state_dict``, ``deepcopy`` and export work as for any pruned model.
    A unit's bias is kept otherwise: the unit then outputs a constant, which :func:`~haloprune.pruning.slim`
    folds into the next layer. Every layer keeps at least one unit, and with ``keep_output_layer`` (the
    default) the last prunable layer (the classifier: its units are the model's outputs) keeps all.

    Units that modules declare (a ViT's attention heads and MLP neurons;
    :class:`~haloprune.core.layers.Units`) are groups too; ``include`` / ``exclude`` (dotted-name globs)
    add or drop parameters, e.g. ``exclude=["patch_embed.*"]`` for a transformer's embedding, whose output
    channels are the residual stream. ``keep_output_layer`` protects the last layer grouped by rows (not
    declared units).

    Returns the masks of the pruned layers' weights. Raises ``ValueError`` if no such pruning reaches the
    budget.
    """
    refuse_sharded(model, "group_prune")
    if params is None and macs is None:
        raise ValueError("give a budget: params=..., macs=... or both")
    if (params is not None and params < 0) or (macs is not None and macs < 0):
        raise ValueError(f"budgets must be >= 0, got params={params}, macs={macs}")
    model = unwrap(model)
    groups, scores = group_scores(
        model, scope=scope, include_bias=include_bias, normalize=normalize, include=include, exclude=exclude
    )
    counts = groups.counts
    flat = torch.cat(scores)
    protected = torch.zeros(flat.numel(), dtype=torch.bool)
    start = 0
    for i, c in enumerate(counts):  # the best unit of every layer, and the whole output layer, stay
        protected[start + int(torch.argmax(scores[i]))] = True
        if keep_output_layer and i == len(counts) - 1 and i >= groups.num_declared:  # a layer: the classifier
            protected[start : start + c] = True
        start += c
    order = torch.sort(flat, stable=True).indices
    order = order[~protected[order]]

    def keep_for(k: int) -> list[torch.Tensor]:
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[order[:k]] = False
        return list(keep.split(counts))

    def fits(k: int) -> bool:
        trial = _copy_with_masks(model, groups, keep_for(k))
        with warnings.catch_warnings():  # slim's note on a model fx cannot trace: once, by the caller's slim
            warnings.simplefilter("ignore")
            small = slim(trial, example_input)
        cost = count_cost(small, example_input, nonzero_only=False)
        return (params is None or cost.params <= params) and (macs is None or cost.macs <= macs)

    lo, hi = 0, len(order)
    if not fits(hi):
        raise ValueError(
            f"no group pruning reaches params={params}, macs={macs}: even pruning every prunable unit "
            "(all but one per layer, and not the output layer) does not"
        )
    while lo < hi:  # the smallest k that fits (cost only falls as k grows)
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    masked = _attach_group_masks(model, groups, keep_for(lo))
    masks = get_masks(model)
    return {n: masks[n] for n in masked if not n.endswith(".bias")}


def _copy_with_masks(model: nn.Module, groups: OutputGroups, keep: list[torch.Tensor]) -> nn.Module:
    trial = copy.deepcopy(model)
    _attach_group_masks(trial, groups, keep)
    return trial
