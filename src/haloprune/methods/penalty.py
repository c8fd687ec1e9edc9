"""Train once with a sparsity-inducing penalty (or none), then prune once at every sparsity, no fine-tuning.

``penalty.name = "none"`` is the dense baseline: one-shot global magnitude pruning after dense training.
``adaptive-lasso`` (Zou 2006) needs a first fit: the first ``first_fit_fraction`` of the epochs train with
L1 (ξ as given), the adaptive weights 1/|ŵ|^γ are taken from that fit, and the rest of the epochs train
with the adaptive penalty; both stages count towards the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from ..config import PenaltyConfig
from ..penalties import build_penalty
from ..train import fit
from . import METHODS
from .base import Context, Method, Outcome, Params


class PenaltyParams(Params):
    penalty: PenaltyConfig = PenaltyConfig()
    first_fit_fraction: float = Field(0.5, gt=0, lt=1)  # adaptive lasso only


@METHODS.register("penalty")
class PenaltyMethod(Method):
    Params = PenaltyParams

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        pen_cfg: PenaltyConfig = self.params.penalty
        optim = ctx.run.optim
        model = ctx.new_model()
        epochs = optim.epochs
        if pen_cfg.name == "adaptive-lasso":
            first = max(1, round(self.params.first_fit_fraction * epochs))
            l1 = build_penalty("l1", model, **pen_cfg.kwargs())
            fit(
                model,
                ctx.data,
                optim,
                epochs=first,
                penalty=l1,
                seed=ctx.seed,
                name=f"{ctx.name}/fit1",
                progress=ctx.progress,
            )
            epochs -= first
        penalty = None if pen_cfg.name == "none" else build_penalty(pen_cfg.name, model, **pen_cfg.kwargs())
        if penalty is not None:
            penalty.to(ctx.device)
        history = fit(
            model,
            ctx.data,
            optim,
            epochs=epochs,
            penalty=penalty,
            penalty_cfg=pen_cfg,
            seed=ctx.seed + 1000 * (epochs != optim.epochs),
            name=ctx.name,
            progress=ctx.progress,
        )
        records = [ctx.record(ctx.prune_copy(model, s), s) for s in sparsities]
        extra = {"weights_below_1e-3": history[-1]["frac_weights_below_1e-3"]}
        for r in records:
            r.update(extra)
        state = {
            "model": model.state_dict(),
            "penalty": penalty.state_dict() if penalty is not None else None,
        }
        return Outcome(records, optim.epochs, state)
