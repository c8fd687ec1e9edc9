"""Pruning at initialisation, then training the sparse network for the whole budget.

* ``snip`` — Lee et al. 2019: connection sensitivity ``|∂L/∂w ⊙ w|`` on ``samples`` training images at
  initialisation; the largest scores are kept (globally).
* ``random`` — the same number of weights kept, chosen uniformly at random (globally).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from haloprune.core.params import select_parameters
from haloprune.methods.base import Context, Method, Outcome, Params
from haloprune.pruning import masks_from_scores
from haloprune.pruning.masks import attach_masks, masked_state_dict


def snip_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """SNIP's connection sensitivity ``|g ⊙ w|`` of the weights ``names`` (default: every prunable
    weight), on one batch."""
    names = select_parameters(model) if names is None else names
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    scores = {n: (model.get_parameter(n).grad * model.get_parameter(n)).detach().abs() for n in names}
    model.zero_grad(set_to_none=True)
    return scores


class SnipParams(Params):
    samples: int = Field(500, gt=0)  # training images used for the scores


class Snip(Method):
    Params = SnipParams
    per_sparsity = True

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        (target,) = sparsities
        model = ctx.new_model()
        g = torch.Generator().manual_seed(ctx.seed)
        idx = torch.randperm(len(ctx.data.y_train), generator=g)[: self.params.samples].to(ctx.device)
        scores = snip_scores(model, ctx.data.x_train[idx], ctx.data.y_train[idx], ctx.prunable(model))
        return _train_masked(ctx, model, masks_from_scores(scores, target), target)


class RandomParams(Params):
    pass


class RandomPruning(Method):
    Params = RandomParams
    per_sparsity = True

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        (target,) = sparsities
        model = ctx.new_model()
        g = torch.Generator().manual_seed(ctx.seed + 12345)
        scores = {n: torch.rand(model.get_parameter(n).shape, generator=g) for n in ctx.prunable(model)}
        return _train_masked(ctx, model, masks_from_scores(scores, target), target)


def _train_masked(ctx: Context, model: nn.Module, masks: dict[str, torch.Tensor], target: float) -> Outcome:
    attach_masks(model, masks)
    ctx.fit(
        model,
        ctx.run.optim,
    )
    return Outcome([ctx.record(model, target)], ctx.run.optim.epochs, {"model": masked_state_dict(model)})
