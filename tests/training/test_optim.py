"""Optimizer and schedule (haloprune.training.optim): the λ parameter group follows the config."""

from __future__ import annotations

from haloprune.build import build
from haloprune.config import TrainConfig, load_config
from haloprune.training.optim import LRSchedule, build_optimizer


def test_lambda_param_group_and_schedules() -> None:
    cfg = load_config(
        TrainConfig,
        None,
        [
            "penalty.name=halo",
            "penalty.xi=1e-6",
            "penalty.psi=1e-3",
            "penalty.lambda_lr_scale=0.5",
            "penalty.lambda_weight_decay=0",
        ],
    )
    model, penalty = build(cfg)
    opt = build_optimizer(model, penalty, cfg.optim, cfg.penalty)
    assert [g["name"] for g in opt.param_groups] == ["model", "penalty"]
    assert opt.param_groups[1]["lr"] == 0.5 * cfg.optim.lr and opt.param_groups[1]["weight_decay"] == 0
    cos = LRSchedule("cosine", steps_per_epoch=10, total_steps=100)
    assert cos(0) == 1.0 and abs(cos(50) - 0.5) < 1e-12 and cos(100) == 0.0
    step = LRSchedule("step", steps_per_epoch=10, total_steps=100, milestones=[3, 6], gamma=0.1)
    assert step(29) == 1.0 and abs(step(30) - 0.1) < 1e-12 and abs(step(60) - 0.01) < 1e-12
