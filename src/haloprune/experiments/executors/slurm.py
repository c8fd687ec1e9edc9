"""``submitit``: one SLURM job per sweep job, through the ``submitit`` package (``haloprune[submitit]``).

A job's task is *checkpointable* in submitit's sense: when SLURM preempts it or its time limit comes
near, submitit signals it, asks it for a checkpoint and requeues it; the task has one already (every
fit writes one at the end of each epoch), so the requeued job replays its finished fits from their
checkpoints, continues the one cut short from its last epoch and ends bit-identical to a job never
interrupted. A job lost without notice (killed, node failure) is submitted again by the driver, which
resumes it the same way.

``cluster = "local"`` runs the same code on this machine (submitit's local executor: a controller
process per job that outlives the driver, like a SLURM job); that is how it is tested. The handle kept in
the store is submitit's job id (SLURM's, or the local controller's pid), so a driver started again
follows the jobs still running instead of submitting them twice. Each job's submissions have a folder of
their own (``<sweep>/submitit/<job key>/<job id>/``: submitit's pickles and the job's logs), so a driver
that died between submitting a job and keeping its handle is followed too: the next finds the
submission there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from haloprune.core.errors import HaloPruneError
from haloprune.core.optional import require
from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.executors.base import Executor, Finished, JobTask
from haloprune.experiments.jobs import Job
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.store import pid_alive


class CheckpointableTask(JobTask):
    """A :class:`JobTask` submitit may requeue: its checkpoints are already on disk, so requeuing it is
    resubmitting the same task."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _local_controller_alive(job: Any) -> bool:
    """Whether submitit's local controller of ``job`` (its job id is the controller's pid) still runs: a
    live process with that pid, started when the job was submitted (not a later one reusing the pid)."""
    try:
        pid = int(job.job_id)
        submitted = job.paths.submitted_pickle.stat().st_mtime  # written just before the controller
    except (ValueError, OSError):
        return False
    return pid_alive(pid, since=submitted)


class SubmititExecutor(Executor):
    name = "submitit"

    def __init__(self, cfg: ExecutorConfig, *, paths: SweepPaths, jobs: int | None = None) -> None:
        super().__init__(cfg, paths=paths, jobs=jobs)
        self._submitit = submitit = require("submitit", "submitit", "the submitit executor")
        self.logs = Path(cfg.folder) if cfg.folder else paths.submitit
        self.cluster = None if cfg.cluster == "auto" else cfg.cluster
        try:
            probe = submitit.AutoExecutor(folder=self.logs / "%j", cluster=self.cluster)
        except RuntimeError as e:  # "auto" with neither SLURM nor a fallback
            raise HaloPruneError(f"submitit: {e}; set executor.cluster") from None
        self.local = probe.cluster == "local"
        self.job_class = probe.job_class
        if self.local and cfg.parallel is None:  # one machine: as many jobs as its cores take
            self.capacity = max(1, (os.cpu_count() or 1) // self.threads)
        elif cfg.parallel is None:
            self.capacity = None  # SLURM queues them
        self.params: dict[str, Any] = {
            "name": f"haloprune-{paths.name}",
            "timeout_min": cfg.timeout_min,
            "cpus_per_task": self.threads,
            "gpus_per_node": cfg.gpus_per_job,
            "tasks_per_node": 1,
            "nodes": 1,
            "mem_gb": cfg.mem_gb,
            "slurm_partition": cfg.partition,
            **{f"slurm_{k}": v for k, v in cfg.slurm.items()},
        }
        self._configure(probe)  # a setting submitit refuses: one line now, not at the first job
        self._jobs: dict[str, Any] = {}

    def _folder(self, key: str) -> Path:
        """submitit's folder for one job's submissions: ``<logs>/<job key>/<submitit's job id>/``."""
        return self.logs / key / "%j"

    def _configure(self, executor: Any) -> Any:
        try:
            executor.update_parameters(**self.params)
        except (NameError, AssertionError, ValueError) as e:
            why = " ".join(str(e).split()).split(" Known executors:")[0]  # what follows is its reminder
            raise HaloPruneError(f"executor: submitit refused a setting: {why}") from None
        return executor

    def _executor_for(self, key: str) -> Any:
        return self._configure(self._submitit.AutoExecutor(folder=self._folder(key), cluster=self.cluster))

    def submit(self, task: JobTask) -> str:
        requeueable = CheckpointableTask(**vars(task))
        job = self._executor_for(task.job.key).submit(requeueable)
        self._jobs[str(job.job_id)] = job
        return str(job.job_id)

    def attach(self, job: Job, handle: str | None) -> str | None:
        if handle is None:  # the driver died before it kept the handle: the newest submission, if any
            submitted = sorted(
                (self.logs / job.key).glob("*/*_submitted.pkl"), key=lambda f: f.stat().st_mtime
            )
            if not submitted:
                return None
            handle = submitted[-1].parent.name
        submitted = self.job_class(folder=self._folder(job.key), job_id=handle)
        if self.local:
            if not (_local_controller_alive(submitted) or submitted.paths.result_pickle.exists()):
                return None
        elif submitted.done() and not submitted.paths.result_pickle.exists():
            return None  # SLURM says it ended without a result: it is gone
        self._jobs[handle] = submitted
        return handle

    def _done(self, handle: str, job: Any) -> bool:
        if job.paths.result_pickle.exists():
            return True
        if self.local and getattr(job, "_process", None) is None:  # attached: follow its pid
            return not _local_controller_alive(job)
        return bool(job.done())

    def poll(self, timeout: float) -> list[Finished]:
        deadline = time.monotonic() + timeout
        while True:
            out: list[Finished] = []
            for handle, job in list(self._jobs.items()):
                if not self._done(handle, job):
                    continue
                del self._jobs[handle]
                if self.local and not job.paths.result_pickle.exists():
                    out.append((handle, RuntimeError(f"submitit job {handle} ended without a result")))
                    continue
                try:
                    out.append((handle, job.result()))
                except self._submitit.core.utils.UncompletedJobError as e:
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    out.append((handle, RuntimeError(f"submitit job {handle}: {first}")))
            if out or not self._jobs or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def running(self) -> int | None:
        if self.local:
            return None
        return sum(1 for job in self._jobs.values() if job.state == "RUNNING")

    def describe(self, job: Job, handle: str) -> str:
        submitted = self.job_class(folder=self._folder(job.key), job_id=handle)
        if submitted.paths.result_pickle.exists():
            return "finished"
        if self.local:
            return "running" if _local_controller_alive(submitted) else "gone"
        return str(submitted.state).lower()

    def close(self, interrupted: bool = False) -> None:
        # jobs on the cluster go on (a driver started again re-attaches to them); nothing to release
        self._jobs.clear()
