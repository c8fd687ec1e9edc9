"""Magnitude-pruning baselines that spend part of the budget after (or while) pruning.

* ``finetune`` — Han et al. 2015: train dense, prune once by global magnitude, fine-tune with the mask.
  The dense pre-training (``1 − finetune_fraction`` of the epochs) is shared by all targets; every
  reported network has seen exactly the full budget. ``finetune_fraction = 1`` prunes the network it
  starts from (a sweep's ``[pretrain]``) and spends every epoch fine-tuning.
* ``gmp`` — Zhu & Gupta 2017: prune gradually while training, sparsity following
  ``s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(t_1 − t_0))³`` between the fractions ``start``/``end`` of the
  steps, updated every ``every`` steps.
* ``imp`` — Frankle et al. 2019 (lottery ticket with rewinding): ``rounds`` times train, prune
  ``1 − (1 − s)^(1/rounds)`` of the remaining weights globally, rewind the survivors to their values at
  ``rewind_fraction`` of the first round; then train the final ticket. The budget is split evenly over the
  ``rounds + 1`` trainings. ``reinit = true`` re-initialises randomly instead of rewinding (the
  random-reinitialisation control).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from pydantic import Field

from haloprune.core.schedules import cubic_sparsity
from haloprune.methods.base import Context, KeepWeightsAt, Method, Outcome, Params
from haloprune.pruning import magnitude_scores, masks_from_scores
from haloprune.pruning.masks import attach_masks, get_masks, masked_state_dict, without_masks
from haloprune.training.callbacks import Callback, FitState


@torch.no_grad()
def rewind_(model: torch.nn.Module, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Load ``state`` (weights, biases, BatchNorm statistics; masks in it are ignored) into ``model`` and
    attach ``masks``: the surviving weights equal the saved ones exactly, the pruned ones are zero."""
    current = model.state_dict()
    for k, v in without_masks(state).items():
        current[k].copy_(v)
    attach_masks(model, masks)


class FineTuneParams(Params):
    # share of the epochs spent fine-tuning (1: all of them, e.g. when the sweep starts from [pretrain])
    finetune_fraction: float = Field(0.25, gt=0, le=1)
    finetune_lr: float = Field(0.01, gt=0)


class MagnitudeFineTune(Method):
    Params = FineTuneParams

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        optim = ctx.run.optim
        ft_epochs = max(1, round(self.params.finetune_fraction * optim.epochs))
        model = ctx.new_model()
        if ft_epochs < optim.epochs:
            ctx.fit(
                model,
                optim,
                epochs=optim.epochs - ft_epochs,
            )
        ft_optim = optim.model_copy(update={"lr": self.params.finetune_lr})
        records = []
        for s in sparsities:
            pruned = ctx.prune_copy(model, s)
            ctx.fit(
                pruned,
                ft_optim,
                epochs=ft_epochs,
                seed=ctx.seed + 1,
                name=f"{ctx.name}/ft{s:g}",
            )
            records.append(ctx.record(pruned, s, finetune_epochs=ft_epochs))
        return Outcome(records, optim.epochs, {"model": masked_state_dict(model)})


class GMPParams(Params):
    start: float = Field(0.1, ge=0, lt=1)  # fraction of the steps when pruning begins
    end: float = Field(0.75, gt=0, le=1)  # ... and reaches the target
    every: int = Field(100, gt=0)  # steps between mask updates


class GradualMagnitude(Method):
    Params = GMPParams
    per_sparsity = True

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        (target,) = sparsities
        optim = ctx.run.optim
        model = ctx.new_model()
        total = optim.steps_per_epoch(len(ctx.data.y_train)) * optim.epochs
        t0, t1 = (
            round(self.params.start * total),
            max(round(self.params.start * total) + 1, round(self.params.end * total)),
        )
        every = self.params.every

        class Gradual(Callback):  # Zhu & Gupta's cubic schedule, pruned every `every` steps
            def on_step_end(self, state: FitState) -> None:
                step = state.step
                if t0 <= step <= t1 and ((step - t0) % every == 0 or step == t1):
                    ctx.prune(model, cubic_sparsity(step, target, t0, t1))

        ctx.fit(model, optim, callbacks=[Gradual()])
        ctx.prune(model, target)  # no-op unless training ended before t1
        return Outcome([ctx.record(model, target)], optim.epochs, {"model": masked_state_dict(model)})


class IMPParams(Params):
    rounds: int = Field(4, gt=0)
    rewind_fraction: float = Field(0.1, ge=0, lt=1)  # of the first training's steps
    reinit: bool = False


class LotteryTicket(Method):
    Params = IMPParams
    per_sparsity = True

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        (target,) = sparsities
        optim = ctx.run.optim
        rounds = self.params.rounds
        per_round = max(1, optim.epochs // (rounds + 1))
        model = ctx.new_model()
        rewind_step = round(
            self.params.rewind_fraction * per_round * optim.steps_per_epoch(len(ctx.data.y_train))
        )
        # step 0: rewind to initialisation (the original lottery ticket)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()} if rewind_step == 0 else {}
        early = KeepWeightsAt(rewind_step)  # in the fit's checkpoints: a resumed job rewinds the same
        ctx.fit(
            model,
            optim,
            epochs=per_round,
            name=f"{ctx.name}/r0",
            callbacks=[early],
        )
        saved = initial if rewind_step == 0 else (early.weights or {})
        names = ctx.prunable(model)
        keep_per_round = (1.0 - target) ** (1.0 / rounds)
        for r in range(1, rounds + 1):
            sparsity = 1.0 - keep_per_round**r if r < rounds else target
            masks = masks_from_scores(magnitude_scores(model, names), sparsity)
            # control: a fresh random initialisation instead of the rewound weights
            start = ctx.new_model(seed=ctx.seed + 7919 * r).state_dict() if self.params.reinit else saved
            rewind_(model, start, masks)
            ctx.fit(
                model,
                optim,
                epochs=per_round,
                seed=ctx.seed + r,
                name=f"{ctx.name}/r{r}",
            )
        assert set(get_masks(model)) == set(names)
        record = ctx.record(model, target, rounds=rounds, epochs_per_round=per_round)
        return Outcome([record], per_round * (rounds + 1), {"model": copy.deepcopy(masked_state_dict(model))})
