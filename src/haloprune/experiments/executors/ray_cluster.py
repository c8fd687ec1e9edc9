"""``ray``: each job on a Ray cluster with its CPUs and GPUs, through the ``ray`` package
(``haloprune[ray]``): against ``ray.init(address=...)``, or a local cluster the driver starts.

A job runs in a *detached* actor of its own, named after the job's key: its work outlives the driver
that submitted it, and a driver started again finds it by name (the handle in the store) and waits for
its result instead of submitting it twice. (A local cluster started by the driver stops with it, and
its jobs with it: those are submitted again and resume from their last end-of-epoch checkpoint.) A job
whose actor dies (its worker killed, its node lost) is submitted again by the driver the same way.
"""

from __future__ import annotations

from typing import Any

from haloprune.core.errors import HaloPruneError
from haloprune.core.optional import require
from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.executors.base import Executor, Finished, JobError, JobResult, JobTask
from haloprune.experiments.jobs import Job
from haloprune.experiments.paths import SweepPaths

NAMESPACE = "haloprune"


class _JobActor:
    """Runs one job and keeps its outcome, for whoever asks (the driver that submitted it, or the next)."""

    def __init__(self) -> None:
        self.outcome: JobResult | JobError | None = None

    def run(self, task: JobTask) -> JobResult | JobError:
        self.outcome = task()
        return self.outcome

    def result(self) -> JobResult | JobError | None:  # an actor runs its calls in order: after run
        return self.outcome


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, cfg: ExecutorConfig, *, paths: SweepPaths, jobs: int | None = None) -> None:
        super().__init__(cfg, paths=paths, jobs=jobs)
        self._ray = ray = require("ray", "ray", "the ray executor")
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(
                    address=cfg.address,
                    num_cpus=cfg.num_cpus if cfg.address is None else None,
                    namespace=NAMESPACE,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = cfg.address or "a local cluster"
                raise HaloPruneError(f"ray: cannot connect to {where}: {' '.join(str(e).split())}") from None
            self._started = True
        if cfg.parallel is None:  # as many jobs as the cluster's CPUs take: the rest wait in the driver
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.capacity = max(1, cpus // self.threads)
        self._actor_class = ray.remote(_JobActor)
        self._refs: dict[Any, tuple[str, Any]] = {}  # object ref -> (handle, actor)

    def _name(self, job: Job) -> str:
        return f"haloprune-{job.key}-{self.paths.name}"

    def submit(self, task: JobTask) -> str:
        handle = self._name(task.job)
        old = self._get(handle)
        if old is not None:  # a dead job's actor, still registered: replace it
            self._ray.kill(old)
        actor = self._actor_class.options(
            name=handle,
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=self.threads,
            num_gpus=self.cfg.gpus_per_job,
            max_restarts=0,
        ).remote()
        self._refs[actor.run.remote(task)] = (handle, actor)
        return handle

    def _get(self, handle: str) -> Any:
        try:
            return self._ray.get_actor(handle, namespace=NAMESPACE)
        except ValueError:
            return None

    def attach(self, job: Job, handle: str | None) -> str | None:
        handle = self._name(job)  # the actor's name says which job it runs: no handle needed
        actor = self._get(handle)
        if actor is None:
            return None
        self._refs[actor.result.remote()] = (handle, actor)
        return handle

    def poll(self, timeout: float) -> list[Finished]:
        if not self._refs:
            return []
        refs = list(self._refs)
        ready, rest = self._ray.wait(refs, num_returns=1, timeout=timeout)  # as soon as one is done
        if ready and rest:  # and any others done by then
            ready += self._ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        out: list[Finished] = []
        for ref in ready:
            handle, actor = self._refs.pop(ref)
            try:
                outcome = self._ray.get(ref)
            except self._ray.exceptions.RayError as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                outcome = RuntimeError(f"ray job {handle}: {first}")
            if outcome is None:  # attached to an actor whose run was cut short
                outcome = RuntimeError(f"ray job {handle} ended without a result")
            out.append((handle, outcome))
            self._ray.kill(actor)  # detached: it would live on
        return out

    def describe(self, job: Job, handle: str) -> str:
        return "running" if self._get(handle) is not None else "gone"

    def close(self, interrupted: bool = False) -> None:
        self._refs.clear()
        if self._started:  # a cluster this driver connected to or started: leave it
            self._ray.shutdown()
