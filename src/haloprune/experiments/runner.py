"""Parallel sweep runner: run many independent jobs once each, recording them in a :class:`ResultStore`.

The runner knows nothing about what a job computes: ``run_job(job, worker_threads)`` returns
``(records, epochs_used)``. Jobs already done in the store are skipped, so an interrupted or killed
sweep is resumed by running it again. Each job is claimed by the process that runs it, so two sweeps
started at once never run the same job twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from haloprune.experiments.store import ResultStore

RunJob = Callable[["Job", int], tuple[list[dict[str, Any]], int]]


@dataclass(frozen=True)
class Job:
    """One independent unit of a sweep; ``spec`` and ``hyperparameters`` must be JSON-able.

    ``sparsity`` is None when one run serves every sparsity (its records then carry their own).
    ``not_in_result`` names the ``spec`` entries that do not change the job's results (where its outputs
    go, a list it does not read): two jobs equal up to those entries, the sweep and the method's name
    compute the same thing, so a sweep can take over the other's results (:meth:`ResultStore.adopt`).
    ``needs`` are the keys of jobs that must be done first (e.g. the dense pre-training a fine-tuning job
    starts from); the runner runs jobs in stages so that every job's needs are done before it starts.
    """

    sweep: str
    method: str
    seed: int
    sparsity: float | None
    spec: dict[str, Any]
    hyperparameters: dict[str, Any]
    not_in_result: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            self._canonical()
        except (TypeError, ValueError) as e:
            raise TypeError(f"Job spec and hyperparameters must be JSON-able: {e}") from None

    def _canonical(self) -> str:
        sparsity = None if self.sparsity is None else float(self.sparsity)
        payload = [self.sweep, self.method, int(self.seed), sparsity, self.spec, self.hyperparameters]
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def key(self) -> str:
        """First 16 hex digits of the SHA-256 of the job's canonical JSON: stable across runs and machines."""
        return hashlib.sha256(self._canonical().encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.key)

    def result_spec(self, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """``spec`` (default: this job's) without the entries that do not change the results."""
        spec = self.spec if spec is None else spec
        return {k: v for k, v in spec.items() if k not in self.not_in_result}


def worker_threads(n_jobs: int) -> int:
    """Torch threads per worker when ``n_jobs`` jobs run at once."""
    return max(1, (os.cpu_count() or 1) // max(1, n_jobs))


def _one_line(exc: BaseException) -> str:
    """``Type: message (at file:line)``, on one line."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        line += f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return line


def _execute(job: Job, run_job: RunJob, store: ResultStore, threads: int) -> tuple[str, str, str | None]:
    """Claim, run and record one job; returns (outcome, key, error) with outcome done|busy|failed."""
    if not store.claim(job):
        return ("done" if store.is_done(job.key) else "busy", job.key, None)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        records, epochs_used = run_job(job, threads)
        store.finish(job.key, list(records), epochs_used, time.perf_counter() - start)
    except Exception as e:
        error = _one_line(e)
        store.fail(job.key, error)
        return ("failed", job.key, error)
    return ("ran", job.key, None)


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


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: let the parent handle it and stop the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker(job: Job, run_job: RunJob, store: ResultStore, threads: int) -> tuple[str, str, str | None]:
    return _execute(job, run_job, store, threads)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel queued jobs and kill running workers (their claims die with their pids)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in processes:
        with contextlib.suppress(Exception):
            p.join(timeout=5)


def run_sweep(
    jobs: list[Job],
    run_job: RunJob,
    store: ResultStore,
    *,
    n_jobs: int = 1,
    progress: bool | None = None,
    reuse: bool = True,
    adopted: Callable[[Job, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every job not yet done in ``store``, ``n_jobs`` at a time; returns a summary.

    ``run_job(job, worker_threads) -> (records, epochs_used)`` must be a picklable top-level function
    when ``n_jobs > 1`` (workers are spawned). Each worker uses ``cpu_count // n_jobs`` torch threads. A
    job that raises is recorded failed and the sweep goes on; a later sweep retries it. Ctrl-C stops
    the sweep (KeyboardInterrupt is re-raised); jobs cut short are run again by the next sweep.

    With ``reuse``, a job that computes the same as one already done in another sweep of the store takes
    over its results instead of running (:meth:`ResultStore.adopt`); ``adopted(job, source_run)`` is then
    called, e.g. to copy files the source wrote.

    Summary: ``done`` (jobs run to completion now), ``skipped`` (already done), ``reused`` (taken over
    from another sweep), ``busy`` (running in another live process), ``failed`` (list of (key, error))
    and ``wall_seconds``.
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
    reused = len(unique) - skipped - len(todo)
    summary: dict[str, Any] = {
        "done": 0,
        "skipped": skipped,
        "reused": reused,
        "busy": 0,
        "failed": [],
        "wall_seconds": 0.0,
    }
    threads = worker_threads(n_jobs)
    disable = None if progress is None else not progress
    bar = tqdm(total=len(unique), initial=skipped + reused, desc="sweep", unit="job", disable=disable)

    def tally(outcome: str, key: str, error: str | None) -> None:
        if outcome == "ran":
            summary["done"] += 1
        elif outcome == "done":
            summary["skipped"] += 1
        elif outcome == "busy":
            summary["busy"] += 1
        else:
            summary["failed"].append((key, error))
        bar.update(1)
        bar.set_postfix(failed=len(summary["failed"]), refresh=False)

    if n_jobs > 1 and len(todo) > 1:
        try:
            pickle.dumps(run_job)
        except Exception as e:
            raise TypeError(f"run_job must be a picklable top-level function for n_jobs > 1: {e}") from None
    try:
        for stage in _stages(todo):
            ready = []
            for job in stage:
                missing = [k for k in job.needs if not store.is_done(k)]
                if not missing:
                    ready.append(job)
                    continue
                error = f"needs job {missing[0]}, which did not finish (see its error); rerun the sweep"
                if store.claim(job):
                    store.fail(job.key, error)
                tally("failed", job.key, error)
            if n_jobs == 1 or len(ready) <= 1:
                _run_in_process(ready, run_job, store, threads, tally)
            else:
                _run_in_pool(ready, run_job, store, threads, min(n_jobs, len(ready)), tally)
    finally:
        bar.close()
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


def _run_in_process(
    todo: list[Job],
    run_job: RunJob,
    store: ResultStore,
    threads: int,
    tally: Callable[[str, str, str | None], None],
) -> None:
    previous = torch.get_num_threads()
    current: Job | None = None
    try:
        for job in todo:
            current = job
            tally(*_execute(job, run_job, store, threads))
            current = None
    except KeyboardInterrupt:
        if current is not None:  # this process lives on: give the claim back explicitly
            with contextlib.suppress(Exception):
                store.release(current.key)
        raise
    finally:
        torch.set_num_threads(previous)


def _run_in_pool(
    todo: list[Job],
    run_job: RunJob,
    store: ResultStore,
    threads: int,
    workers: int,
    tally: Callable[[str, str, str | None], None],
) -> None:
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init)
    try:
        futures: dict[Future[tuple[str, str, str | None]], Job] = {
            pool.submit(_worker, job, run_job, store, threads): job for job in todo
        }
        for future in as_completed(futures):
            job = futures[future]
            try:
                tally(*future.result())
            except BrokenProcessPool:
                tally("failed", job.key, "worker process died (killed or out of memory); rerun the sweep")
            except Exception as e:  # e.g. the store failed inside the worker
                error = _one_line(e)
                with contextlib.suppress(Exception):
                    store.fail(job.key, error)
                tally("failed", job.key, error)
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)
