"""What ``fit`` does around the step, as callbacks: the progress bar, the NaN guard, the metrics file and
checkpoints (and the ``on_step`` / ``on_epoch`` functions of :func:`~haloprune.training.fit`).

A callback overrides any of :class:`Callback`'s hooks; each gets the :class:`FitState`. ``fit`` always
runs :class:`NaNGuard` and :class:`ProgressBar`; :func:`~haloprune.training.train` adds
:class:`MetricsFile` and :class:`Checkpoint` for its run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from haloprune.core.errors import HaloPruneError
from haloprune.core.io import save_verified
from haloprune.penalties import Penalty
from haloprune.pruning.masks import load_state_dict, masked_state_dict
from haloprune.training.evaluate import evaluate


class TrainingDiverged(HaloPruneError):
    """The loss or a parameter became NaN/inf."""


@dataclass
class FitState:
    """The loop's state as callbacks see it; ``step`` counts optimizer steps over the whole run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    penalty: Penalty | None
    name: str
    epochs: int
    steps_per_epoch: int
    step: int = 0
    epoch: int = 0
    loss: torch.Tensor | None = None  # the last step's total loss (detached)
    sums: torch.Tensor | None = None  # this epoch so far: task loss x images, correct, images
    classified: bool = True  # outputs are class logits (accuracies make sense)
    history: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)  # callbacks' state, saved in checkpoints

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue exactly after this epoch (``fit(resume=...)``)."""
        return {
            "model": masked_state_dict(self.model),
            "penalty": self.penalty.state_dict() if self.penalty is not None else None,
            "optimizer": self.optimizer.state_dict(),
            **self.progress(),
        }

    def progress(self) -> dict[str, Any]:
        """Where the run stands, beside the model, penalty and optimizer: the lr schedule, the batch
        generator and RNG, the step and epoch, callbacks' state and the metrics rows so far."""
        return {
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "extras": self.extras,
            "history": self.history,
        }

    def restore_progress(self, saved: dict[str, Any]) -> None:
        """Go back to where :meth:`progress` was taken (the optimizer's state restored already)."""
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.step, self.epoch = int(saved["step"]), int(saved["epoch"])
        self.extras = saved.get("extras", {})
        self.history = list(saved.get("history", []))


class Callback:
    """Hooks called by ``fit``; the defaults do nothing."""

    def on_epoch_start(self, state: FitState) -> None:
        pass

    def on_step_end(self, state: FitState) -> None:
        pass

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        pass

    def on_fit_end(self, state: FitState) -> None:
        pass


EVERY = 50  # steps between the checks that need the loss on the host (one device sync each)


def _due(state: FitState) -> bool:
    return state.step % EVERY == 0 or state.step % state.steps_per_epoch == 0


class NaNGuard(Callback):
    """Stops training with :class:`TrainingDiverged` (naming the bad parameters) once the loss is NaN/inf;
    checked every ``EVERY`` steps and at the end of each epoch."""

    def on_step_end(self, state: FitState) -> None:
        if _due(state) and state.loss is not None and not torch.isfinite(state.loss):
            named = list(state.model.named_parameters())
            if state.penalty is not None:
                named += [(f"penalty.{n}", p) for n, p in state.penalty.named_parameters()]
            bad = [n for n, p in named if not torch.isfinite(p).all()]
            where = f"; non-finite parameters: {', '.join(bad[:5])}" if bad else ""
            raise TrainingDiverged(
                f"loss became {state.loss.item()} at step {state.step}{where}; lower the lr, xi or psi"
            )


_BAR_SLOT: int | None = None  # in sweep workers: where the per-run bar sits under the sweep's bar


def set_bar_slot(slot: int | None) -> None:
    """Stack this process's per-run progress bars at ``slot`` (and drop the per-epoch lines)."""
    global _BAR_SLOT
    _BAR_SLOT = slot


class ProgressBar(Callback):
    """A tqdm bar per epoch (loss and running accuracy) and one line per finished epoch.

    ``progress``: True always, False never, None when the output is a terminal (and no per-epoch lines
    inside a sweep worker, whose bars stack under the sweep's)."""

    def __init__(self, progress: bool | None) -> None:
        self.progress = progress
        self.bar: Any = None

    def on_epoch_start(self, state: FitState) -> None:
        self.bar = tqdm(
            total=state.steps_per_epoch,
            desc=f"{state.name} {state.epoch}/{state.epochs}",
            leave=False,
            disable=None if self.progress is None else not self.progress,
            unit="batch",
            position=_BAR_SLOT,
        )

    def on_step_end(self, state: FitState) -> None:
        if _due(state) and state.sums is not None and state.loss is not None:
            _, correct, seen = state.sums.tolist()
            shown = f"{100 * correct / seen:.1f}" if state.classified and seen else "-"
            self.bar.set_postfix(loss=f"{state.loss.item():.4f}", acc=shown)
        self.bar.update()

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        self.bar.close()
        if self.progress is True or (self.progress is None and _BAR_SLOT is None):
            tqdm.write(
                f"[{state.name}] epoch {state.epoch}/{state.epochs}  loss {row['train_ce']:.4f}  "
                f"train {row['train_accuracy']:.2f}%  val {row['val_accuracy']:.2f}%  "
                f"|w|<1e-3: {100 * row['frac_weights_below_1e-3']:.1f}%  {row['seconds']:.1f}s"
            )


class MetricsFile(Callback):
    """Appends each epoch's metrics row to ``path`` (JSON lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


class Checkpoint(Callback):
    """Writes :meth:`FitState.checkpoint` to ``path`` after every epoch, verified and atomically (the
    previous one is kept until the new one is complete)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_verified(state.checkpoint(), self.path)


class ExperimentLogger:
    """Where a run's metrics also go, besides ``metrics.jsonl`` (TensorBoard, MLflow, W&B:
    :mod:`haloprune.integrations.loggers`). The defaults do nothing."""

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_text(self, name: str, text: str) -> None:
        pass

    def log_figure(self, name: str, path: Path) -> None:
        pass

    def close(self) -> None:
        pass


class ExperimentLog(Callback):
    """Each epoch's metrics row (the penalty's statistics included) to an :class:`ExperimentLogger`, with
    the epoch as its step; a method that trains in phases (dense, then fine-tuning) gives one series."""

    def __init__(self, logger: ExperimentLogger) -> None:
        self.logger = logger
        self.offset = 0  # epochs of the fits before this one

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        self.logger.log_metrics(row, self.offset + state.epoch)

    def on_fit_end(self, state: FitState) -> None:
        self.offset += state.epoch


class KeepBestTest(Callback):
    """``optim.keep = "best-test"``: the test accuracy after every epoch goes in the metrics row, and when
    training ends the model gets back the weights of the epoch with the best one (ties: the earlier epoch).
    This is how the HALO reference reports its CIFAR results; it is a choice made on the test set, so the
    numbers it gives are optimistic. Its state is in the checkpoint (``extras["best_test"]``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        acc = evaluate(state.model, self.x, self.y, self.batch_size)["accuracy"]
        row["test_accuracy"] = acc
        best = state.extras.get("best_test")
        if best is None or acc > best["accuracy"]:
            weights = {k: v.detach().clone() for k, v in masked_state_dict(state.model).items()}
            state.extras["best_test"] = {"accuracy": acc, "epoch": state.epoch, "model": weights}

    def on_fit_end(self, state: FitState) -> None:
        best = state.extras.get("best_test")
        if best is not None:
            load_state_dict(state.model, best["model"], restore=False)
