"""Train once with a sparsity-inducing penalty (or none), then prune once at every sparsity, no fine-tuning.

``target`` (HALO's target-sparsity mode) is run once per target: ``penalty.target_sparsity`` is set to it,
and the record also holds how many weights training itself left at exactly zero (``trained_sparsity``) and
the accuracy (and on a text corpus the bits per byte) before pruning, so "asked for" and "got" sit side by
side.

``penalty.name = "none"`` is the dense baseline: one-shot global magnitude pruning after dense training.
``adaptive-lasso`` (Zou 2006) needs a first fit: the first ``first_fit_fraction`` of the epochs train with
L1 (ξ as given), the adaptive weights 1/|ŵ|^γ are taken from that fit, and the rest of the epochs train
with the adaptive penalty; both stages count towards the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field

from haloprune.config import PenaltyConfig
from haloprune.methods.base import Context, Method, Outcome, Params
from haloprune.penalties import PENALTIES, Penalty, build_penalty
from haloprune.pruning.masks import masked_state_dict


class PenaltyParams(Params):
    penalty: PenaltyConfig = PenaltyConfig()
    first_fit_fraction: float = Field(0.5, gt=0, lt=1)  # adaptive lasso only


class PenaltyMethod(Method):
    Params = PenaltyParams

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        model, penalty, history = self.train(ctx, self.params.penalty)
        records = [ctx.record(ctx.prune_copy(model, s), s) for s in sparsities]
        extra = {"weights_below_1e-3": history[-1]["frac_weights_below_1e-3"]}
        for r in records:
            r.update(extra)
        state = {
            "model": masked_state_dict(model),
            "penalty": penalty.state_dict() if penalty is not None else None,
        }
        return Outcome(records, ctx.run.optim.epochs, state)

    def train(
        self, ctx: Context, pen_cfg: PenaltyConfig
    ) -> tuple[torch.nn.Module, Penalty | None, list[dict[str, Any]]]:
        """The trained model, its penalty and the metrics rows (the whole budget is spent here)."""
        optim = ctx.run.optim
        model = ctx.new_model()
        epochs = optim.epochs
        if pen_cfg.name == "adaptive-lasso":
            first = max(1, round(self.params.first_fit_fraction * epochs))
            l1 = build_penalty("l1", model, **pen_cfg.kwargs("l1"))
            ctx.fit(
                model,
                optim,
                epochs=first,
                penalty=l1,
                name=f"{ctx.name}/fit1",
            )
            epochs -= first
        penalty = None if pen_cfg.name == "none" else build_penalty(pen_cfg.name, model, **pen_cfg.kwargs())
        if penalty is not None:
            penalty.to(ctx.device)
        history = ctx.fit(
            model,
            optim,
            epochs=epochs,
            penalty=penalty,
            penalty_cfg=pen_cfg,
            seed=ctx.seed + 1000 * (epochs != optim.epochs),
        )
        return model, penalty, history


class TargetPenaltyMethod(PenaltyMethod):
    """A penalty told the sparsity it must reach (HALO ``target_sparsity``): one training run per target."""

    per_sparsity = True

    @classmethod
    def job_params(cls, params: dict[str, Any], optimizer: str) -> dict[str, Any]:
        """The penalty's :meth:`~haloprune.penalties.Penalty.keyed_defaults` written out where not given
        (target-mode HALO's ``target_control``, and ``max_shrink`` with Adam/AdamW: a store's runs of the
        old defaults are other jobs)."""
        penalty = params.get("penalty")
        if not isinstance(penalty, dict) or penalty.get("name") not in PENALTIES:
            return params
        keyed = PENALTIES[penalty["name"]].keyed_defaults(optimizer, penalty)
        missing = {k: v for k, v in keyed.items() if penalty.get(k) is None}
        return {**params, "penalty": {**penalty, **missing}} if missing else params

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        (target,) = sparsities
        pen_cfg = self.params.penalty.model_copy(update={"target_sparsity": target})
        model, penalty, _ = self.train(ctx, pen_cfg)
        trained = ctx.record(model, target)
        unpruned = ("accuracy", "val_accuracy", "bits_per_byte", "val_bits_per_byte")  # those it has
        record = ctx.record(
            ctx.prune_copy(model, target),
            target,
            trained_sparsity=trained["achieved_sparsity"],
            **{f"unpruned_{k}": trained[k] for k in unpruned if k in trained},
        )
        state = {"model": masked_state_dict(model), "penalty": penalty.state_dict() if penalty else None}
        return Outcome([record], ctx.run.optim.epochs, state)
