"""Training: the loop (``loop.fit``) and what runs around it (``callbacks``), optimizer and schedule
(``optim``), evaluation (``evaluate``), a config trained into a run directory (``run.train``),
multi-process data parallelism (``distributed``)."""

from __future__ import annotations

from haloprune.training.callbacks import Callback, Checkpoint, FitState, MetricsFile, TrainingDiverged
from haloprune.training.evaluate import (
    evaluate,
    evaluate_batches,
    prune_and_evaluate,
    pruned_copy,
    pruned_record,
)
from haloprune.training.loop import fit
from haloprune.training.optim import LRSchedule, build_optimizer
from haloprune.training.run import TrainResult, load_trained, prepare_run_dir, train

__all__ = [
    "Callback",
    "Checkpoint",
    "FitState",
    "LRSchedule",
    "MetricsFile",
    "TrainResult",
    "TrainingDiverged",
    "build_optimizer",
    "evaluate",
    "evaluate_batches",
    "fit",
    "load_trained",
    "prepare_run_dir",
    "prune_and_evaluate",
    "pruned_copy",
    "pruned_record",
    "train",
]
