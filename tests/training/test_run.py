"""A training run (haloprune.training.run): bit-identical on CPU, its run directory, exact resume after
SIGKILL, an unwritable directory fails before training, divergence stops with the step named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from haloprune.cli import main
from haloprune.config import TrainConfig, load_config
from haloprune.core.io import load_torch, load_verified
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


RUN_ARGS = [
    "--set",
    "penalty.name=halo",
    "--set",
    "penalty.xi=1e-7",
    "--set",
    "penalty.psi=1e-3",
    "--set",
    "data.train_subset=20000",
    "--set",
    "data.val_size=1000",
    "--set",
    "data.test_subset=1000",
    "--epochs",
    "4",
    "--quiet",
]


def _train_cmd(out: Path, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "haloprune",
        "train",
        "--name",
        name,
        "--set",
        f"out_dir='{out}'",
        *RUN_ARGS,
    ]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, real_fmnist: Path) -> None:
    subprocess.run(_train_cmd(tmp_path, "straight"), check=True, capture_output=True, timeout=600)

    victim = subprocess.Popen(
        _train_cmd(tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)  # mid-epoch 3 (or right after epoch 2's metrics line)
    victim.wait()
    assert not (tmp_path / "killed" / "model.pt").exists()

    # Starting it again without --resume must not throw the progress away.
    again = subprocess.run(_train_cmd(tmp_path, "killed"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "haloprune", "train", "--resume", str(tmp_path / "killed"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr

    a = load_torch(tmp_path / "straight" / "model.pt")
    b = load_torch(tmp_path / "killed" / "model.pt")
    for part in ("model", "penalty"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            if isinstance(a[part][k], torch.Tensor):
                assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    ca, cb = (
        load_verified(tmp_path / "straight" / "checkpoint.pt"),
        load_verified(tmp_path / "killed" / "checkpoint.pt"),
    )
    assert ca["step"] == cb["step"] and torch.equal(ca["generator"], cb["generator"])
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    lines_a = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b) == 4


def test_unwritable_run_directory_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    t0 = time.perf_counter()
    code = main(["train", "--set", f"out_dir='{blocker / 'runs'}'", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write the run directory" in err and err.count("\n") == 1
    assert time.perf_counter() - t0 < 5


def test_divergence_stops_with_the_step_and_exit_2(
    tmp_path: Path, real_fmnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "train",
            "--name",
            "boom",
            "--set",
            f"out_dir='{tmp_path}'",
            "--set",
            "optim.lr=1e12",
            "--set",
            "optim.schedule='constant'",
            "--set",
            "data.train_subset=6000",
            "--set",
            "data.val_size=500",
            "--epochs",
            "2",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "loss became" in err and "at step" in err and err.count("\n") == 1
    assert not (tmp_path / "boom" / "model.pt").exists()


def test_a_moved_run_folder_resumes_where_it_is_now(tmp_path: Path) -> None:
    """``haloprune train --resume`` of a run folder moved elsewhere: its config.toml still names the old
    place, which is not a different config; any other difference still is."""
    from haloprune.core.errors import ConfigError
    from haloprune.training.run import prepare_run_dir

    cfg = _cfg(tmp_path / "old", "name='run'")
    run_dir, _ = prepare_run_dir(cfg)
    (tmp_path / "new").mkdir()
    moved = run_dir.rename(tmp_path / "new" / "renamed")
    here = cfg.model_copy(update={"out_dir": str(moved.parent), "name": moved.name})
    assert prepare_run_dir(here, resume=True) == (moved, False)
    with pytest.raises(ConfigError, match="different config"):
        prepare_run_dir(here, resume=False)
    other = here.model_copy(update={"seed": 5})
    with pytest.raises(ConfigError, match="different config"):
        prepare_run_dir(other, resume=True)
