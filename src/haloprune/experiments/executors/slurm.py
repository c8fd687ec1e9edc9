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
follows the jobs still running instead of submitting them twice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from haloprune.core.errors import HaloPruneError
from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.executors.base import Executor, Finished, JobTask
from haloprune.experiments.store import pid_alive


class CheckpointableTask(JobTask):
    """A :class:`JobTask` submitit may requeue: its checkpoints are already on disk, so requeuing it is
    resubmitting the same task."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _local_controller_alive(job_id: str) -> bool:
    """Whether submitit's local controller ``job_id`` (its pid) is still running."""
    try:
        pid = int(job_id)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ValueError, OSError):
        return False
    return b"submitit" in cmdline and pid_alive(pid)


class SubmititExecutor(Executor):
    name = "submitit"

    def __init__(self, cfg: ExecutorConfig, *, folder: Path, jobs: int | None = None) -> None:
        super().__init__(cfg, folder=folder, jobs=jobs)
        try:
            import submitit
        except ImportError:
            raise HaloPruneError(
                "the submitit executor needs the submitit package: pip install 'haloprune[submitit]'"
            ) from None
        self._submitit = submitit
        self.logs = Path(cfg.folder) if cfg.folder else folder / "submitit"
        cluster = None if cfg.cluster == "auto" else cfg.cluster
        try:
            self.executor = submitit.AutoExecutor(folder=self.logs / "%j", cluster=cluster)
        except RuntimeError as e:  # "auto" with neither SLURM nor a fallback
            raise HaloPruneError(f"submitit: {e}; set executor.cluster") from None
        self.local = self.executor.cluster == "local"
        if self.local and cfg.parallel is None:  # one machine: as many jobs as its cores take
            self.capacity = max(1, (os.cpu_count() or 1) // self.threads)
        elif cfg.parallel is None:
            self.capacity = None  # SLURM queues them
        params: dict[str, Any] = {
            "name": f"haloprune-{folder.name}",
            "timeout_min": cfg.timeout_min,
            "cpus_per_task": self.threads,
            "gpus_per_node": cfg.gpus_per_job,
            "tasks_per_node": 1,
            "nodes": 1,
            "mem_gb": cfg.mem_gb,
            "slurm_partition": cfg.partition,
            **{f"slurm_{k}": v for k, v in cfg.slurm.items()},
        }
        try:
            self.executor.update_parameters(**params)
        except (NameError, AssertionError, ValueError) as e:
            why = " ".join(str(e).split())
            raise HaloPruneError(f"executor: submitit refused a setting: {why}") from None
        self._jobs: dict[str, Any] = {}

    def submit(self, task: JobTask) -> str:
        requeueable = CheckpointableTask(**vars(task))
        job = self.executor.submit(requeueable)
        self._jobs[job.job_id] = job
        return str(job.job_id)

    def attach(self, handle: str) -> bool:
        job = self.executor.job_class(folder=self.logs / "%j", job_id=handle)
        if self.local:
            if not (_local_controller_alive(handle) or job.paths.result_pickle.exists()):
                return False
        elif job.done() and not job.paths.result_pickle.exists():
            return False  # SLURM says it ended without a result: it is gone
        self._jobs[handle] = job
        return True

    def _done(self, handle: str, job: Any) -> bool:
        if job.paths.result_pickle.exists():
            return True
        if self.local and getattr(job, "_process", None) is None:  # attached: follow its pid
            return not _local_controller_alive(handle)
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

    def describe(self, handle: str) -> str:
        job = self.executor.job_class(folder=self.logs / "%j", job_id=handle)
        if job.paths.result_pickle.exists():
            return "finished"
        if self.local:
            return "running" if _local_controller_alive(handle) else "gone"
        return str(job.state).lower()

    def close(self, interrupted: bool = False) -> None:
        # jobs on the cluster go on (a driver started again re-attaches to them); nothing to release
        self._jobs.clear()
