"""The training loop: deterministic on CPU, writes its run directory, the λ group follows the config."""

from __future__ import annotations

from pathlib import Path

import torch

from haloprune.build import build
from haloprune.config import TrainConfig, load_config
from haloprune.core.io import load_torch, save_torch
from haloprune.training.optim import LRSchedule, build_optimizer
from haloprune.training.run import train

SMALL = ["data.train_subset=1500", "data.val_size=500", "data.test_subset=500", "optim.epochs=2"]


def _cfg(tmp_path: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [*SMALL, f"out_dir='{tmp_path}'", *extra])


def test_same_seed_gives_bit_identical_training(tmp_path: Path, real_fmnist: Path) -> None:
    cfg = _cfg(tmp_path, "penalty.name=halo", "penalty.xi=1e-6", "penalty.psi=1e-3")
    a = train(cfg, save=False, progress=False)
    b = train(cfg, save=False, progress=False)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.penalty.lam, b.penalty.lam)
    assert a.history[-1]["val_accuracy"] == b.history[-1]["val_accuracy"]
    other = train(
        _cfg(tmp_path, "seed=1", "penalty.name=halo", "penalty.xi=1e-6", "penalty.psi=1e-3"),
        save=False,
        progress=False,
    )
    assert not torch.equal(other.model.fc1.weight, a.model.fc1.weight)


def test_run_directory_contents(tmp_path: Path, real_fmnist: Path) -> None:
    cfg = _cfg(tmp_path, "name=r1", "penalty.name=halo", "penalty.xi=1e-6", "penalty.psi=1e-3")
    train(cfg, progress=False)
    run = tmp_path / "r1"
    assert load_config(TrainConfig, run / "config.toml") == cfg
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    ckpt = load_torch(run / "checkpoint.pt")  # weights_only: plain tensors and containers
    assert ckpt["epoch"] == 2 and "optimizer" in ckpt and "scheduler" in ckpt
    final = load_torch(run / "model.pt")
    assert set(final) >= {"model", "penalty"}
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries


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


def test_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    from haloprune.core.io import save_json

    save_json({"a": 1}, tmp_path / "x.json")
    assert (tmp_path / "x.json").stat().st_mode & 0o044 == 0o044  # readable by group/others (umask 022)


def test_callbacks_see_every_step_and_epoch_and_a_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    """A user's callback gets each hook in order; ``Checkpoint`` + ``MetricsFile`` write what resume needs:
    continuing from the epoch-1 checkpoint gives the same weights as training straight through."""
    from haloprune.build import seed_everything
    from haloprune.config import OptimConfig
    from haloprune.data import SplitData
    from haloprune.data.datasets import DATASETS
    from haloprune.models import build_model
    from haloprune.training import Callback, Checkpoint, FitState, MetricsFile, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g)
    data = SplitData(x[:200], y[:200], x[200:], y[200:], x[200:], y[200:], DATASETS["fashion-mnist"])
    optim = OptimConfig(epochs=2, batch_size=50)

    class Log(Callback):
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_epoch_start(self, state: FitState) -> None:
            self.events.append(f"start{state.epoch}")

        def on_step_end(self, state: FitState) -> None:
            self.events.append(f"s{state.step}")

        def on_epoch_end(self, state: FitState, row: dict) -> None:
            self.events.append(f"end{state.epoch}:{row['epoch']}")
            if state.epoch == 1:
                save_torch(state.checkpoint(), tmp_path / "epoch1.pt")

    seed_everything(0)
    straight = build_model("lenet-300-100")
    log = Log()
    ckpt = Checkpoint(tmp_path / "checkpoint.pt")
    fit(straight, data, optim, progress=False, callbacks=[log, MetricsFile(tmp_path / "m.jsonl"), ckpt])
    assert log.events == [
        "start1",
        "s1",
        "s2",
        "s3",
        "s4",
        "end1:1",
        "start2",
        "s5",
        "s6",
        "s7",
        "s8",
        "end2:2",
    ]
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2

    state = load_torch(tmp_path / "epoch1.pt")
    assert state["epoch"] == 1 and state["step"] == 4
    resumed = build_model("lenet-300-100")
    resumed.load_state_dict(state["model"])
    fit(resumed, data, optim, progress=False, resume=state)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
