"""The sweep driver: run many independent jobs once each, on an executor, recording them in a
:class:`ResultStore`.

The runner knows nothing about what a job computes: ``run_job(job, threads, checkpoints, settings)``
returns ``(records, epochs_used)`` and keeps its end-of-epoch checkpoints in the folder ``checkpoints``,
so a job run again resumes where it stopped; ``settings`` (:class:`WorkerSettings`: data folder, progress,
logging) travel with every job to wherever it runs. Nor where it runs: an executor
(:mod:`haloprune.experiments.executors`: local processes, SLURM through submitit, Ray) runs it and hands
the outcome back. The driver alone writes the store: it claims a job, submits it, keeps the executor's
handle with the claim, and records the result when it comes back. Jobs already done are skipped, so an
interrupted or killed sweep is resumed by running it again; a driver started again re-attaches to the
jobs its predecessor left running on a cluster, picks up those that finished meanwhile (each worker
leaves its result in the job's work folder), and counts none twice. Two drivers started at once never
run the same job twice: the second sees the first's live claim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import pickle
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.executors import (
    Executor,
    JobError,
    JobResult,
    JobTask,
    RunJob,
    build_executor,
    read_result,
    worker_threads,
)
from haloprune.experiments.jobs import Job, WorkerSettings
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.store import ResultStore

__all__ = ["Job", "RunJob", "WorkerSettings", "run_sweep", "sweep_status", "worker_threads"]


def _stages(todo: list[Job]) -> list[list[Job]]:
    """``todo`` in stages: each job after the stage of every job it needs (needs outside ``todo`` are
    taken as done or failed already)."""
    level: dict[str, int] = {}
    by_key = {job.key: job for job in todo}

    def depth(job: Job, seen: tuple[str, ...] = ()) -> int:
        if job.key in seen:
            raise ValueError(f"jobs need each other in a cycle: {' -> '.join((*seen, job.key))}")
        if job.key not in level:
            inner = [depth(by_key[k], (*seen, job.key)) + 1 for k in job.needs if k in by_key]
            level[job.key] = max(inner, default=0)
        return level[job.key]

    stages: list[list[Job]] = []
    for job in todo:
        d = depth(job)
        stages.extend([] for _ in range(d + 1 - len(stages)))
        stages[d].append(job)
    return stages


def run_sweep(
    jobs: list[Job],
    run_job: RunJob,
    store: ResultStore,
    *,
    n_jobs: int = 1,
    progress: bool | None = None,
    reuse: bool = True,
    adopted: Callable[[Job, dict[str, Any]], None] | None = None,
    executor: ExecutorConfig | Executor | None = None,
    settings: WorkerSettings | None = None,
) -> dict[str, Any]:
    """Run every job not yet done in ``store`` on ``executor`` (default: local, ``n_jobs`` at a time);
    returns a summary.

    ``run_job(job, threads, checkpoints, settings) -> (records, epochs_used)`` must be a picklable
    top-level function unless it runs in this process (local, one job at a time); ``settings`` go with
    every job, whatever the executor (default: only ``progress``, for the per-run bars too; a sweep
    config's, as ``haloprune sweep`` gives them: :func:`haloprune.experiments.sweep.worker_settings`).
    A job that raises is recorded failed and the sweep goes on; a later sweep retries it. A job whose
    worker was lost (killed, preempted, its node gone) is submitted again up to ``executor.max_retries``
    times, and resumes from its checkpoints. Ctrl-C stops the sweep (KeyboardInterrupt is re-raised):
    the local executor's jobs are stopped and given back; jobs on a cluster go on, and the next sweep
    re-attaches to them.

    With ``reuse``, a job that computes the same as one already done in another sweep of the store takes
    over its results instead of running (:meth:`ResultStore.adopt`); ``adopted(job, source_run)`` is then
    called, e.g. to copy files the source wrote.

    Summary: ``done`` (jobs finished now, collected or re-attached included), ``skipped`` (already done),
    ``reused`` (taken over from another sweep), ``attached`` (of ``done``: left running by an earlier
    driver and followed to the end), ``collected`` (of ``done``: finished while no driver was there, their
    result taken from the work folder), ``retried`` (submissions again after a lost worker), ``busy``
    (claimed by another live driver), ``failed`` (list of (key, error)) and ``wall_seconds``.
    """
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    start = time.perf_counter()
    unique = list({job.key: job for job in jobs}.values())
    todo = [job for job in unique if not store.is_done(job.key)]
    skipped = len(unique) - len(todo)
    if reuse:
        waiting, todo = todo, []
        for job in waiting:
            source = store.adopt(job)
            if source is None:
                todo.append(job)
            elif adopted is not None:
                adopted(job, source)
    summary: dict[str, Any] = {
        "done": 0,
        "skipped": skipped,
        "reused": len(unique) - skipped - len(todo),
        "attached": 0,
        "collected": 0,
        "retried": 0,
        "busy": 0,
        "failed": [],
        "wall_seconds": 0.0,
    }
    if not todo:
        summary["wall_seconds"] = time.perf_counter() - start
        return summary
    if isinstance(executor, Executor):
        ex = executor
    else:
        cfg = executor if executor is not None else ExecutorConfig()
        ex = build_executor(cfg, SweepPaths(store.path, unique[0].sweep), n_jobs)
    if ex.name != "local" or (ex.capacity or 1) > 1:
        try:
            pickle.dumps(run_job)
        except Exception as e:
            raise TypeError(f"run_job must be a picklable top-level function to run elsewhere: {e}") from None
    bar = tqdm(
        total=len(unique),
        initial=len(unique) - len(todo),
        desc="sweep",
        unit="job",
        disable=None if progress is None else not progress,
    )
    settings = settings if settings is not None else WorkerSettings(progress=progress)
    driver = _Driver(ex, run_job, settings, store, summary, bar, queued=len(todo))
    try:
        with ex:
            for stage in _stages(todo):
                driver.run(stage)
    finally:
        bar.close()
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


class _Driver:
    """Claims, submits, follows and records the jobs of one sweep on one executor."""

    def __init__(
        self,
        executor: Executor,
        run_job: RunJob,
        settings: WorkerSettings,
        store: ResultStore,
        summary: dict[str, Any],
        bar: Any,
        queued: int,
    ) -> None:
        self.ex, self.run_job, self.settings = executor, run_job, settings
        self.store, self.summary, self.bar = store, summary, bar
        self.queued = queued
        # handle -> (job, submissions so far, the line of its bars under the sweep's; 0: not submitted here)
        self.flight: dict[str, tuple[Job, int, int]] = {}

    def run(self, stage: list[Job]) -> None:
        waiting = deque(stage)
        try:
            while waiting or self.flight:
                while waiting and (self.ex.capacity is None or len(self.flight) < self.ex.capacity):
                    self.start(waiting.popleft())
                    self.queued -= 1
                self.show()
                for handle, outcome in self.ex.poll(timeout=1.0):
                    self.collect(handle, outcome)
                self.show()
        except KeyboardInterrupt:
            if self.ex.name == "local":  # this process lives on: give the claims back explicitly
                for job, *_ in self.flight.values():
                    with contextlib.suppress(Exception):
                        self.store.release(job.key)
            raise

    def tally(self, outcome: str, key: str, error: str | None = None) -> None:
        if outcome == "ran":
            self.summary["done"] += 1
        elif outcome == "done":
            self.summary["skipped"] += 1
        elif outcome == "busy":
            self.summary["busy"] += 1
        else:
            self.summary["failed"].append((key, error))
        self.bar.update(1)

    def show(self) -> None:
        running = self.ex.running()
        flight = len(self.flight)
        running = flight if running is None else running
        self.bar.set_postfix(
            queued=self.queued + flight - running,
            running=running,
            failed=len(self.summary["failed"]),
            refresh=True,
        )

    def start(self, job: Job) -> None:
        """Claim ``job`` and have it run: its result if a worker left one, the earlier driver's
        submission if it still runs, else a new submission."""
        missing = [k for k in job.needs if not self.store.is_done(k)]
        if missing:
            error = f"needs job {missing[0]}, which did not finish (see its error); rerun the sweep"
            if self.store.claim(job):
                self.store.fail(job.key, error)
            self.tally("failed", job.key, error)
            return
        if not self.store.claim(job):
            self.tally("done" if self.store.is_done(job.key) else "busy", job.key)
            return
        left = read_result(self.work(job))
        if left is not None:  # finished while no driver was there to record it
            self.summary["collected"] += 1
            self.record(job, left)
            return
        handle = self.ex.attach(job, self.store.handle(job.key, self.ex.name))
        if handle is not None:  # still running (or finished) where the last driver submitted it
            self.store.set_handle(job.key, self.ex.name, handle)
            self.flight[handle] = (job, 1, 0)
            self.summary["attached"] += 1
            return
        self.submit(job, 0)

    def work(self, job: Job) -> Path:
        return SweepPaths(self.store.path, job.sweep).work(job.key)

    def submit(self, job: Job, submissions: int) -> None:
        taken = {slot for *_, slot in self.flight.values()}
        slot = next(n for n in itertools.count(1) if n not in taken)
        settings = dataclasses.replace(self.settings, bar_slot=slot)
        handle = self.ex.submit(JobTask(job, self.run_job, self.ex.threads, self.work(job), settings))
        self.store.set_handle(job.key, self.ex.name, handle)
        self.flight[handle] = (job, submissions + 1, slot)

    def collect(self, handle: str, outcome: JobResult | JobError | BaseException) -> None:
        job, submissions, _ = self.flight.pop(handle)
        if isinstance(outcome, JobResult):
            self.record(job, outcome)
        elif isinstance(outcome, JobError):
            self.store.fail(job.key, outcome.error)
            self.tally("failed", job.key, outcome.error)
        elif submissions <= self.ex.cfg.max_retries:  # the worker was lost: again, from its checkpoints
            self.summary["retried"] += 1
            self.submit(job, submissions)
        else:
            error = f"{' '.join(str(outcome).split())} (after {submissions} submissions); rerun the sweep"
            self.store.fail(job.key, error)
            self.tally("failed", job.key, error)

    def record(self, job: Job, result: JobResult) -> None:
        try:
            self.store.finish(job.key, result.records, result.epochs_used, result.seconds)
        except (KeyError, ValueError) as e:  # records the store cannot take: the job's fault
            self.store.fail(job.key, str(e))
            self.tally("failed", job.key, str(e))
            return
        shutil.rmtree(self.work(job), ignore_errors=True)
        self.tally("ran", job.key)


def sweep_status(jobs: list[Job], store: ResultStore, executor: Executor | None = None) -> dict[str, Any]:
    """Where each job of a sweep stands, from the store (and ``executor``, asked about the jobs a driver
    submitted): counts of ``queued`` / ``running`` / ``done`` / ``failed``, ``driver`` (a live driver's
    ``pid@host``, or None) and ``running_jobs``: (key, method, handle, what the executor says)."""
    counts = dict.fromkeys(("queued", "running", "done", "failed"), 0)
    drivers: set[str] = set()
    running_jobs = []
    for job in {j.key: j for j in jobs}.values():
        run = store.run(job.key)
        status = run["status"] if run is not None else "pending"
        if status == "done":
            counts["done"] += 1
        elif status == "failed":
            counts["failed"] += 1
        elif status == "running":
            counts["running"] += 1
            if store.claimed_live(job.key):
                drivers.add(f"{run['pid']}@{run['host']}")
            handle = run.get("handle") if run.get("executor") == getattr(executor, "name", None) else None
            state = executor.describe(job, handle) if executor is not None and handle else "unknown"
            running_jobs.append((job.key, job.method, run.get("handle"), state))
        else:
            counts["queued"] += 1
    return {**counts, "driver": ", ".join(sorted(drivers)) or None, "running_jobs": running_jobs}
