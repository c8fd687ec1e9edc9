"""``local``: this machine's cores. One job at a time runs in the driver's own process; more run in a
pool of spawned worker processes (``--jobs``), each with ``cores // jobs`` torch threads.

Workers die with the driver (Linux: the parent-death signal), so a killed driver never leaves a worker
writing a job's checkpoints while a restarted one runs the same job. Nothing survives the driver here to
re-attach to: the jobs it had running are run again and resume from their last end-of-epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.executors.base import Executor, Finished, JobTask
from haloprune.experiments.paths import SweepPaths

PR_SET_PDEATHSIG = 1


def worker_threads(n_jobs: int) -> int:
    """Torch threads per worker when ``n_jobs`` jobs run at once."""
    return max(1, (os.cpu_count() or 1) // max(1, n_jobs))


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: let the parent handle it and stop the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):  # Linux: die with the driver, however it dies
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _run(task: JobTask) -> object:
    return task()


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, cfg: ExecutorConfig, *, paths: SweepPaths, jobs: int | None = None) -> None:
        super().__init__(cfg, paths=paths, jobs=jobs)
        self.workers = max(1, self.capacity or 1)
        self.capacity = self.workers
        self.threads = cfg.cpus_per_job or worker_threads(self.workers)
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future[object], str] = {}
        self._inline: deque[tuple[str, JobTask]] = deque()  # one worker: run in this process
        self._count = 0

    def submit(self, task: JobTask) -> str:
        self._count += 1
        handle = f"{os.getpid()}.{self._count}"
        if self.workers == 1:
            self._inline.append((handle, task))
        else:
            self._futures[self._ensure_pool().submit(_run, task)] = handle
        return handle

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init)
        return self._pool

    def poll(self, timeout: float) -> list[Finished]:
        if self._inline:
            handle, task = self._inline.popleft()
            return [(handle, task())]
        if not self._futures:
            return []
        done, _ = wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out: list[Finished] = []
        broken = False
        for future in done:
            handle = self._futures.pop(future)
            try:
                out.append((handle, future.result()))  # type: ignore[arg-type]
            except BrokenProcessPool:
                broken = True
                out.append((handle, RuntimeError("worker process died (killed or out of memory)")))
            except Exception as e:  # could not pickle the task or its result
                out.append((handle, e))
        if broken:  # the pool is unusable: every job in it is lost; a new pool runs what comes next
            for future, handle in list(self._futures.items()):
                out.append((handle, RuntimeError("worker process died (killed or out of memory)")))
                del self._futures[future]
            self._stop()
        return out

    def running(self) -> int | None:
        return None if self.workers == 1 else min(len(self._futures), self.workers)

    def _stop(self) -> None:
        """Cancel queued jobs and kill running workers."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            with contextlib.suppress(Exception):
                p.terminate()
        for p in processes:
            with contextlib.suppress(Exception):
                p.join(timeout=5)

    def close(self, interrupted: bool = False) -> None:
        self._inline.clear()
        if interrupted:
            self._stop()
        elif self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
