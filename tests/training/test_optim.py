"""Optimizer and schedule (haloprune.training.optim): the λ parameter group follows the config."""

from __future__ import annotations

import pytest

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


def _lrs_per_step(optim, pen_cfg, steps_per_epoch: int = 5, epochs: int = 2) -> list[tuple[float, float]]:
    """(weights' lr, λ's lr) that each step of ``fit`` used, for a tiny HALO-penalised model."""
    import torch
    from torch import nn

    from haloprune.penalties import build_penalty
    from haloprune.training import Callback, fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    halo = build_penalty("halo", model, **pen_cfg.kwargs())
    batches = [(torch.randn(2, 4), torch.randint(0, 3, (2,))) for _ in range(steps_per_epoch)]
    seen: list[tuple[float, float]] = []

    class Record(Callback):
        def on_step_end(self, state) -> None:  # the scheduler has stepped: the NEXT step's lrs
            seen.append(tuple(g["lr"] for g in state.optimizer.param_groups))

    first = (optim.lr, optim.lr)
    fit(
        model,
        batches,
        optim.model_copy(update={"epochs": epochs}),
        penalty=halo,
        penalty_cfg=pen_cfg,
        progress=False,
        callbacks=[Record()],
    )
    return [first, *seen[:-1]]


def test_milestones_in_steps_with_a_factor_per_milestone_and_lambda_schedules() -> None:
    from haloprune.config import OptimConfig, PenaltyConfig

    optim = OptimConfig(schedule="step", milestone_unit="step", milestones=[3, 7], gamma=[0.5, 0.1], lr=0.2)
    follow = PenaltyConfig(name="halo", xi=1e-4, psi=1e-3)
    lrs = _lrs_per_step(optim, follow)
    weights = [w for w, _ in lrs]
    assert weights == pytest.approx([0.2] * 3 + [0.1] * 4 + [0.01] * 3)  # from step 3 on x0.5, from 7 on x0.1
    assert [lam for _, lam in lrs] == pytest.approx(weights)  # "follow"
    constant = _lrs_per_step(optim, follow.model_copy(update={"lambda_schedule": "constant"}))
    assert [w for w, _ in constant] == pytest.approx(weights) and {lam for _, lam in constant} == {0.2}
    own = _lrs_per_step(optim, follow.model_copy(update={"lambda_gamma": 0.01}))
    assert [lam for _, lam in own] == pytest.approx([0.2] * 3 + [0.002] * 4 + [0.00002] * 3)
    by_epoch = LRSchedule("step", steps_per_epoch=5, total_steps=10, milestones=[1], gamma=[0.1])
    assert by_epoch(4) == 1.0 and by_epoch(5) == pytest.approx(0.1)


def test_the_reference_cifar_double_decay() -> None:
    """The HALO reference's CIFAR HALO runs: weights 0.1 -> 0.01 -> 1e-4, λ 0.1 -> 1e-3 -> 1e-5."""
    from haloprune.config import OptimConfig, PenaltyConfig

    optim = OptimConfig(schedule="step", milestones=[1, 2], gamma=[0.1, 0.01], lr=0.1)
    pen = PenaltyConfig(name="halo", xi=1e-4, psi=1e-3, lambda_gamma=[0.01, 0.01])
    lrs = _lrs_per_step(optim, pen, steps_per_epoch=2, epochs=3)
    flat = [lr for pair in lrs for lr in pair]
    assert flat == pytest.approx([0.1, 0.1] * 2 + [0.01, 1e-3] * 2 + [1e-4, 1e-5] * 2)
