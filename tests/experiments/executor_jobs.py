"""Jobs for the executor tests, importable by their workers (submitit's processes, Ray's actors): a job
that logs when it starts and ends, and the real sweep job with a log of every epoch it trains."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import haloprune.methods.base as methods_base
from haloprune.experiments.jobs import Job, WorkerSettings
from haloprune.experiments.sweep import run_job
from haloprune.training.callbacks import Callback, FitState


def _append(path: str | Path, line: str) -> None:
    with open(path, "a") as fh:  # one short write in append mode: whole lines from any process
        fh.write(line + "\n")


def logged_job(
    job: Job, threads: int, checkpoints: Path, settings: WorkerSettings
) -> tuple[list[dict[str, Any]], int]:
    """Writes ``start KEY PID`` and ``end KEY PID`` to ``spec["log"]`` around ``spec["sleep"]`` seconds."""
    _append(job.spec["log"], f"start {job.key} {os.getpid()}")
    time.sleep(job.spec.get("sleep", 0.0))
    records = [
        {"sparsity": s, "accuracy": 0.9 - 0.1 * s + 0.001 * job.seed, "val_accuracy": 0.9 - 0.1 * s}
        for s in job.spec["sparsities"]
    ]
    _append(job.spec["log"], f"end {job.key} {os.getpid()}")
    return records, 3


class _EpochLog(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        _append(self.path, f"epoch {os.getpid()} {state.name} {state.epoch}")


def epoch_logged_job(
    job: Job, threads: int, checkpoints: Path, settings: WorkerSettings
) -> tuple[list[dict[str, Any]], int]:
    """The sweep's own ``run_job``, writing ``epoch PID FIT EPOCH`` to ``$EPOCH_LOG`` after every epoch
    this process trains (epochs restored from a checkpoint are not trained, so not logged)."""
    fit = methods_base.fit
    log = os.environ["HALOPRUNE_TEST_EPOCH_LOG"]

    def logged_fit(*args: Any, callbacks: Any = (), **kw: Any) -> Any:
        return fit(*args, callbacks=[*callbacks, _EpochLog(log)], **kw)

    methods_base.fit = logged_fit  # type: ignore[assignment]
    try:
        return run_job(job, threads, checkpoints, settings)
    finally:
        methods_base.fit = fit  # type: ignore[assignment]
