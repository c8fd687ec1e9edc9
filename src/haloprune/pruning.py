"""One-shot pruning: scores → masks at an exact budget → masks attached to the model; and its cost.

*Unstructured* (:func:`global_magnitude_prune`, :func:`layerwise_magnitude_prune`): sparsity is the
fraction of *prunable* weights (see :mod:`haloprune.selection`; by default the weights of Linear and Conv
layers, not biases) that are zero. Asking for sparsity ``s`` over ``N`` weights prunes exactly
``round(s · N)`` of them (per layer for :func:`layerwise_magnitude_prune`). Ties are broken
deterministically: among equal scores the weight that comes first (module order, then flat index) is
pruned first. Already-masked weights always count as pruned first.

*Structured* (:func:`group_prune`): whole output neurons / filters, ranked by group norm across layers, to
a target number of parameters or multiply-accumulates of the slimmed model (:func:`haloprune.slim.slim`).

*Cost* (:func:`count_cost`): the one FLOPs counter — weights and multiply-accumulates per input.

*After pruning* (:func:`recalibrate_batchnorm`): BatchNorm statistics re-estimated for the pruned network,
weights untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Unpack

import torch
from torch import nn

from .masks import attach_mask, get_masks
from .penalties.group import OutputGroups
from .selection import Scope, SelectionArgs, select_parameters, unwrap
from .slim import slim


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


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, x: torch.Tensor, *, images: int = 2048, batch_size: int = 256, seed: int = 0
) -> int:
    """Re-estimate the BatchNorm running statistics of a (pruned) ``model`` on ``images`` inputs of ``x``.

    Pruning shifts every downstream activation, so the statistics the dense network collected are
    stale; this recomputes them (an exact average over a fixed random subset of ``x``, drawn with
    ``seed``), forward passes only: no weight changes, no labels. Dropout and the model's mode are left as
    they were. Returns the number of BatchNorm layers recalibrated (0: none, nothing changed).
    """
    if images <= 0:
        return 0
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in bns]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:images]
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for chunk in idx.split(batch_size):
            model(x[chunk].to(device))
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return len(bns)


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


def _prune(model: nn.Module, sparsity: float, per_layer: bool, **selection: Unpack[SelectionArgs]):
    names = select_parameters(model, **selection)
    masks = masks_from_scores(magnitude_scores(model, names), sparsity, per_layer=per_layer)
    for n, m in masks.items():
        attach_mask(model, n, m)
    return masks


def global_magnitude_prune(
    model: nn.Module, sparsity: float, **selection: Unpack[SelectionArgs]
) -> dict[str, torch.Tensor]:
    """Prune the smallest-|w| weights across all prunable layers together, in place; returns the masks.

    Prunable: see :mod:`haloprune.selection` (Linear, Conv and attention weights by default; ``include``
    / ``exclude`` add or remove parameters by dotted-name glob). A parameter shared by several modules
    is pruned once."""
    return _prune(model, sparsity, False, **selection)


def layerwise_magnitude_prune(
    model: nn.Module, sparsity: float, **selection: Unpack[SelectionArgs]
) -> dict[str, torch.Tensor]:
    """Prune the same fraction of smallest-|w| weights in every prunable tensor, in place."""
    return _prune(model, sparsity, True, **selection)


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
    parameter shared by several modules is one row, counted once)."""
    model = unwrap(model)
    rows = []
    names = select_parameters(model, **selection)
    for n in names:
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


# ------------------------------------------------------------------------------------------------ cost


@dataclass(frozen=True)
class Cost:
    """Size and compute of a model: ``params`` weights of its Linear/Conv layers, ``macs``
    multiply-accumulates of those layers per forward of one input (biases, BatchNorm, activations and
    pooling are not counted: they are a rounding error next to the layers)."""

    params: int
    macs: int


@torch.no_grad()
def count_cost(model: nn.Module, example_input: torch.Tensor, *, nonzero_only: bool = True) -> Cost:
    """Weights and multiply-accumulates per input of every ``Linear``/``Conv`` layer of ``model``.

    ``nonzero_only=True`` counts only surviving (nonzero) weights: the work of an ideal sparse kernel,
    and for a masked model the number of surviving weights. ``nonzero_only=False`` counts every weight:
    what dense kernels really do (use it for a slimmed model). A layer's MACs are its counted weights
    times the number of positions it is applied at (1 for a ``Linear`` on ``(N, F)``, the output's
    spatial size for a ``Conv``), measured by running ``example_input`` (batch ``N``) through the model.
    """
    model = unwrap(model)
    batch = example_input.shape[0]
    params, macs = 0, 0
    seen: set[int] = set()
    handles = []

    def hook(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal params, macs
        w = module.weight
        counted = int(torch.count_nonzero(w)) if nonzero_only else w.numel()
        units = w.shape[0]
        positions = out.numel() // (batch * units)
        macs += counted * positions
        if id(w) not in seen:  # a weight shared by several layers is counted once
            seen.add(id(w))
            params += counted

    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return Cost(params, macs)


# ------------------------------------------------------------------------------------ group pruning

GroupNorm = Literal["rms", "layer", "l2"]


def group_scores(
    model: nn.Module, *, scope: Scope = "all", include_bias: bool = False, normalize: GroupNorm = "rms"
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
    names = select_parameters(model, scope=scope, include_bias=include_bias)
    params = [model.get_parameter(n).detach().float() for n in names]
    groups = OutputGroups(names, [tuple(p.shape) for p in params])
    norms = groups.norms(params)
    if normalize == "rms":
        return groups, [n / size**0.5 for n, size in zip(norms, groups.sizes, strict=True)]
    if normalize == "layer":
        return groups, [n / n.mean().clamp_min(torch.finfo(n.dtype).tiny) for n in norms]
    if normalize == "l2":
        return groups, norms
    raise ValueError(f"normalize must be 'rms', 'layer' or 'l2', got {normalize!r}")


def _attach_group_masks(model: nn.Module, groups: OutputGroups, keep: list[torch.Tensor]) -> None:
    existing = get_masks(model)
    for name, bias, k in zip(groups.weight_names(), groups.bias_names(), keep, strict=True):
        for n in (name, bias):
            if n is None:
                continue
            p = model.get_parameter(n)
            mask = k.view(-1, *([1] * (p.dim() - 1))).expand_as(p).to(p.device)
            if n in existing:
                mask = mask & existing[n]
            attach_mask(model, n, mask)


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
) -> dict[str, torch.Tensor]:
    """Prune whole output neurons / filters, in place, until the *slimmed* model fits the budget.

    Units are ranked globally by :func:`group_scores` (lowest first) and the fewest lowest units are
    pruned such that :func:`haloprune.slim.slim` of the result has at most ``params`` weights and/or
    ``macs`` multiply-accumulates per input (counted densely: what the small model really costs; a pruned
    unit also removes the next layer's columns that read it). Give ``params``, ``macs`` or both.

    A pruned unit's weight row (and bias, with ``include_bias``) is masked in the ordinary mask format
    (:mod:`haloprune.masks`), so ``state_dict``, ``deepcopy`` and export work as for any pruned model. A
    unit's bias is kept otherwise: the unit then outputs a constant, which :func:`~haloprune.slim.slim`
    folds into the next layer. Every layer keeps at least one unit, and with ``keep_output_layer`` (the
    default) the last prunable layer (the classifier: its units are the model's outputs) keeps all.

    Returns the masks of the pruned layers' weights. Raises ``ValueError`` if no such pruning reaches the
    budget.
    """
    if params is None and macs is None:
        raise ValueError("give a budget: params=..., macs=... or both")
    if (params is not None and params < 0) or (macs is not None and macs < 0):
        raise ValueError(f"budgets must be >= 0, got params={params}, macs={macs}")
    model = unwrap(model)
    groups, scores = group_scores(model, scope=scope, include_bias=include_bias, normalize=normalize)
    counts = groups.counts
    flat = torch.cat(scores)
    protected = torch.zeros(flat.numel(), dtype=torch.bool)
    start = 0
    for i, c in enumerate(counts):  # the best unit of every layer, and the whole output layer, stay
        protected[start + int(torch.argmax(scores[i]))] = True
        if keep_output_layer and i == len(counts) - 1:
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
        cost = count_cost(slim(trial, example_input), example_input, nonzero_only=False)
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
    _attach_group_masks(model, groups, keep_for(lo))
    masks = get_masks(model)
    return {n: masks[n] for n in groups.weight_names()}


def _copy_with_masks(model: nn.Module, groups: OutputGroups, keep: list[torch.Tensor]) -> nn.Module:
    trial = copy.deepcopy(model)
    _attach_group_masks(trial, groups, keep)
    return trial
