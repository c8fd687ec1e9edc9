"""A run: a config trained into its run directory (``runs/<name>/``), resumable, and loaded back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from haloprune.build import build, load_data
from haloprune.config import TrainConfig, load_config, to_toml
from haloprune.core.errors import ConfigError, HaloPruneError
from haloprune.core.io import load_torch, load_verified, save_json, save_text, save_torch
from haloprune.core.sharded import gathered_state
from haloprune.data import SplitData
from haloprune.penalties import Penalty
from haloprune.pruning.masks import load_state_dict, masked_state_dict
from haloprune.training import distributed
from haloprune.training.callbacks import Checkpoint, ExperimentLog, ExperimentLogger, MetricsFile
from haloprune.training.loop import fit


def prepare_run_dir(cfg: TrainConfig, *, reuse: bool = True, resume: bool = False) -> tuple[Path, bool]:
    """Create ``runs/<name>/`` with the resolved config; returns (dir, already_finished).

    Never destroys work: a directory holding a run with a *different* config is an error, and so is an
    unfinished run with checkpoints unless ``resume`` (or it would be started over). ``resume`` needs
    an existing run directory.
    """
    run_dir = cfg.run_dir
    config_file = run_dir / "config.toml"
    text = to_toml(cfg)
    if resume and not config_file.exists():
        raise HaloPruneError(f"nothing to resume: {run_dir} has no config.toml")
    if config_file.exists():
        if config_file.read_text() != text and not (resume and _moved(config_file, cfg)):
            raise ConfigError(
                f"{run_dir} holds a run with a different config; choose another name "
                f"(--set name=...) or out_dir, or delete it"
            )
        if reuse and (run_dir / "model.pt").exists():
            return run_dir, True
        if not resume and _has_checkpoint(run_dir):
            raise HaloPruneError(
                f"{run_dir} holds an unfinished run; continue it with `haloprune train --resume {run_dir}`, "
                "or choose another name"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        if not resume:
            save_text(text, config_file)
    except OSError as err:
        raise HaloPruneError(f"cannot write the run directory {run_dir}: {err.strerror or err}") from None
    return run_dir, False


def _moved(config_file: Path, cfg: TrainConfig) -> bool:
    """True when ``config_file`` holds ``cfg`` but for where the run lives (``out_dir``, ``name``): a run
    folder moved since, resumed where it is now."""
    saved = load_config(TrainConfig, config_file)
    return to_toml(saved.model_copy(update={"out_dir": cfg.out_dir, "name": cfg.name})) == to_toml(cfg)


@dataclass
class TrainResult:
    model: nn.Module
    penalty: Penalty | None
    history: list[dict[str, Any]]
    run_dir: Path | None
    data: SplitData


def load_trained(run_dir: str | Path, device: str = "cpu") -> tuple[TrainConfig, nn.Module, Penalty | None]:
    """The config, trained model and penalty saved in a finished run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise HaloPruneError(f"{run_dir} is not a haloprune run directory (no config.toml)")
    cfg = load_config(TrainConfig, run_dir / "config.toml")
    if not (run_dir / "model.pt").is_file():
        raise HaloPruneError(f"{run_dir} has no model.pt: the run did not finish")
    state = load_torch(run_dir / "model.pt", map_location=device)
    model, penalty = build(cfg, device)

    load_state_dict(model, state["model"], restore=False)
    if penalty is not None and state.get("penalty") is not None:
        penalty.load_state_dict(state["penalty"])
    return cfg, model, penalty


def train(
    cfg: TrainConfig,
    *,
    data: SplitData | None = None,
    save: bool = True,
    progress: bool | None = None,
    resume: bool = False,
    logger: ExperimentLogger | None = None,
) -> TrainResult:
    """Train the model ``cfg`` describes. With ``save``, everything goes to ``cfg.run_dir``.

    ``logger`` (:mod:`haloprune.integrations.loggers`) also gets the resolved config and every epoch's
    metrics (on rank 0).

    ``resume`` continues an interrupted run from its last verified end-of-epoch checkpoint; the result is
    bit-identical to an uninterrupted run on CPU.

    Started by ``torchrun``, every rank trains its share of each global batch (see
    :mod:`haloprune.training.distributed`) and only rank 0 writes the run directory.
    """
    world, device = distributed.setup(cfg.device)
    run_dir = None
    if save:
        run_dir, finished = distributed.on_main(world, lambda: prepare_run_dir(cfg, resume=resume))
        if finished:
            _, model, penalty = load_trained(run_dir, str(device))
            history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            return TrainResult(
                model, penalty, history, run_dir, data or load_data(cfg.data, cfg.seed, device)
            )
    data = data if data is not None else load_data(cfg.data, cfg.seed, device)
    shard = cfg.optim.parallel == "fsdp" and world.distributed
    prepare = (lambda m: distributed.shard_model(m, device, world)) if shard else None
    model, penalty = build(cfg, device, prepare)
    state: dict[str, Any] | Path | None = None
    if run_dir is not None and resume:
        state = _checkpoint_of(run_dir, shard, device)
    if run_dir is not None:  # metrics written after the checkpoint we resume from are replayed
        lines = (
            (run_dir / "metrics.jsonl").read_text().splitlines()
            if (run_dir / "metrics.jsonl").exists()
            else []
        )
        epoch = _epoch_of(state)
        history = [json.loads(line) for line in lines[:epoch]]
        if isinstance(state, dict):
            state.setdefault("history", history)  # checkpoints written before they held the rows
        distributed.barrier(world)  # every rank has read it before rank 0 rewrites it
        if world.is_main:
            save_text("".join(json.dumps(r) + "\n" for r in history), run_dir / "metrics.jsonl")

    writers: list[Any] = []
    if run_dir is not None and world.is_main:
        writers.append(MetricsFile(run_dir / "metrics.jsonl"))
    if run_dir is not None and shard:  # every process writes its part
        from haloprune.training.fsdp import ShardedCheckpoint

        writers.append(ShardedCheckpoint(run_dir / _SHARDED))
    elif run_dir is not None and world.is_main:
        writers.append(Checkpoint(run_dir / "checkpoint.pt"))
    if logger is not None and world.is_main:
        logger.log_config(cfg.model_dump(mode="json"))
        writers.append(ExperimentLog(logger))
    history = fit(
        model,
        data,
        cfg.optim,
        penalty=penalty,
        penalty_cfg=cfg.penalty,
        seed=cfg.seed,
        name=cfg.name,
        progress=progress,
        resume=state,
        callbacks=writers,
    )
    if run_dir is not None:  # a sharded model's state gathered whole (every process takes part)
        keep = world.is_main
        final = {
            "model": gathered_state(masked_state_dict(model), keep),
            "penalty": gathered_state(penalty.state_dict(), keep) if penalty is not None else None,
            "epoch": cfg.optim.epochs,
        }
        if world.is_main:
            save_torch(final, run_dir / "model.pt")
            save_json(history[-1], run_dir / "final_metrics.json")
    distributed.barrier(world)  # the run is complete on disk when any rank returns
    return TrainResult(model, penalty, history, run_dir, data)


_WHOLE = ("checkpoint.pt", "checkpoint.prev.pt")  # a run's checkpoint and the one before it (save_verified)
_SHARDED = "checkpoint"  # the folder of a sharded run's checkpoint (optim.parallel = "fsdp")


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / n).exists() for n in (*_WHOLE, _SHARDED))


def _checkpoint_of(run_dir: Path, sharded: bool, device: torch.device) -> dict[str, Any] | Path | None:
    """What ``fit`` resumes from: the sharded checkpoint's folder (loads into a sharded model or a whole
    one), else the verified ``checkpoint.pt`` (a whole model only); None when there is none."""
    folder = run_dir / _SHARDED
    if (folder / ".metadata").is_file():
        return folder
    if not any((run_dir / n).exists() for n in _WHOLE):
        return None
    if sharded:
        raise HaloPruneError(
            f"{run_dir} was checkpointed by one process: resume it in one process (without torchrun), "
            'or start it again to train with optim.parallel = "fsdp"'
        )
    return load_verified(run_dir / "checkpoint.pt", map_location=device)  # fit restores it whole


def _epoch_of(state: dict[str, Any] | Path | None) -> int:
    """The epoch a checkpoint was written after (0: none)."""
    if state is None:
        return 0
    if isinstance(state, Path):
        from haloprune.training.fsdp import saved_extra

        return int((saved_extra(state) or {}).get("epoch", 0))
    return int(state["epoch"])
