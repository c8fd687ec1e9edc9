"""The optimizer and lr schedule a config describes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from haloprune.config import OptimConfig, PenaltyConfig
from haloprune.penalties import Penalty


@dataclass
class LRSchedule:
    """lr multiplier per optimizer step (a plain callable object, so the scheduler state is saveable).

    ``"step"``: the lr is multiplied by ``gamma`` (one factor, or one per milestone) at each milestone;
    ``unit`` says whether milestones count epochs or 0-based optimizer steps (the lr of step ``t`` has
    every milestone ``<= t`` applied)."""

    kind: str
    steps_per_epoch: int
    total_steps: int
    milestones: list[int] = field(default_factory=list)
    gamma: float | list[float] = 0.1
    unit: str = "epoch"

    def __call__(self, step: int) -> float:
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        if self.kind == "step":
            at = step // self.steps_per_epoch if self.unit == "epoch" else step
            gammas = self.gamma if isinstance(self.gamma, list) else [self.gamma] * len(self.milestones)
            return math.prod(g for m, g in zip(self.milestones, gammas, strict=True) if at >= m)
        return 1.0

    @classmethod
    def of(cls, optim: OptimConfig, steps_per_epoch: int, total_steps: int) -> LRSchedule:
        """The weights' schedule ``optim`` describes."""
        return cls(
            optim.schedule,
            steps_per_epoch,
            total_steps,
            list(optim.milestones),
            optim.gamma,
            optim.milestone_unit,
        )

    def for_lambda(self, pen: PenaltyConfig) -> LRSchedule:
        """λ's schedule: this one (``lambda_schedule = "follow"``; at the milestones by ``lambda_gamma`` if
        set), or none (``"constant"``)."""
        if pen.lambda_schedule == "constant":
            return replace(self, kind="constant")
        if pen.lambda_gamma is not None:
            return replace(self, gamma=pen.lambda_gamma)
        return self


def build_optimizer(
    model: nn.Module, penalty: Penalty | None, optim: OptimConfig, pen: PenaltyConfig
) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW (``optim.optimizer``); the penalty's own parameters (λ) get their
    own group (reference: same lr and weight decay as the weights)."""
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "name": "model"}]
    extra = list(penalty.parameters()) if penalty is not None else []
    if extra:
        wd = optim.weight_decay if pen.lambda_weight_decay is None else pen.lambda_weight_decay
        groups.append(
            {"params": extra, "name": "penalty", "lr": optim.lr * pen.lambda_lr_scale, "weight_decay": wd}
        )
    if optim.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
    return torch.optim.SGD(
        groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov, weight_decay=optim.weight_decay
    )
