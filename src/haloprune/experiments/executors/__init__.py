"""Where a sweep's jobs run: ``local`` (this machine's cores), ``submitit`` (SLURM) and ``ray``, chosen
by ``[executor]`` / ``--executor``. The driver (:func:`haloprune.experiments.runner.run_sweep`) claims,
submits, collects and records; an executor only runs :class:`JobTask`\\ s and says when each ended."""

from __future__ import annotations

from haloprune.core.registry import Registry
from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.executors.base import (
    Executor,
    JobError,
    JobResult,
    JobTask,
    RunJob,
    one_line,
    read_result,
)
from haloprune.experiments.executors.local import LocalExecutor, worker_threads
from haloprune.experiments.executors.ray_cluster import RayExecutor
from haloprune.experiments.executors.slurm import SubmititExecutor
from haloprune.experiments.paths import SweepPaths

EXECUTORS: Registry[Executor] = Registry(
    "executor", {"local": LocalExecutor, "submitit": SubmititExecutor, "ray": RayExecutor}
)


def build_executor(cfg: ExecutorConfig, paths: SweepPaths, jobs: int | None = None) -> Executor:
    """The executor ``cfg`` names, for the sweep whose files are ``paths``; ``jobs``: jobs at once
    unless ``cfg.parallel`` says (the local executor's worker processes)."""
    cfg.check()
    return EXECUTORS[cfg.name](cfg, paths=paths, jobs=jobs)


__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorConfig",
    "JobError",
    "JobResult",
    "JobTask",
    "LocalExecutor",
    "RayExecutor",
    "RunJob",
    "SubmititExecutor",
    "build_executor",
    "one_line",
    "read_result",
    "worker_threads",
]
