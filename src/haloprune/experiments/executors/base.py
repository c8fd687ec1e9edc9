"""What every executor shares: the task a worker runs for one job, what it hands back, the interface.

A :class:`JobTask` is everything a worker needs to run one job, picklable: the job, the function that
computes it, its threads, its work folder (end-of-epoch checkpoints, so a job resumed anywhere continues
where it stopped), the sweep's :class:`WorkerSettings` (data folder, progress, logging) and the driver's
working directory (a SLURM node or a Ray worker starts elsewhere). Nothing travels through the
environment: a job runs the same on every executor, and from the command line as from Python. It returns
a :class:`JobResult`, or a :class:`JobError` when the job itself raised: that is the job's failure,
recorded as such. Anything else an executor reports (a worker killed, a node lost, a preemption without
notice) is the infrastructure's, and the driver submits the job again.

The worker also leaves its result in the work folder (``result.json``) before handing it back: a driver
that died in between finds it there when started again and records it without running the job twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from haloprune.core.io import save_text
from haloprune.experiments.config import ExecutorConfig
from haloprune.experiments.jobs import Job, WorkerSettings
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.store import dumps

RunJob = Callable[[Job, int, Path, WorkerSettings], tuple[list[dict[str, Any]], int]]
RESULT = "result.json"  # in a job's work folder: its records, left by the worker for the driver


@dataclass(frozen=True)
class JobResult:
    records: list[dict[str, Any]]
    epochs_used: int
    seconds: float


@dataclass(frozen=True)
class JobError:
    """The job raised: ``error`` is its one-line message."""

    error: str


def one_line(exc: BaseException) -> str:
    """``Type: message (at file:line)``, on one line."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        line += f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})"
    return line


def read_result(folder: Path) -> JobResult | None:
    """The result a worker left in ``folder``, or None (none yet, or unreadable: the job is run again)."""
    try:
        raw = json.loads((folder / RESULT).read_text())
        return JobResult(raw["records"], int(raw["epochs_used"]), float(raw["seconds"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[bool]:
    """Hold the job's lock file, so two workers never write one job's checkpoints at once (a second
    submission of a job, by a driver that died before it kept the first one's handle, waits for the
    first). Yields False when the folder was removed while waiting: the job was recorded meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            try:
                current = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                current = False
            yield current
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class JobTask:
    """One job as a worker runs it (picklable); calling it runs the job and returns its outcome."""

    job: Job
    run_job: RunJob
    threads: int
    folder: Path  # its work folder (SweepPaths.work)
    settings: WorkerSettings = field(default_factory=WorkerSettings)
    cwd: str = field(default_factory=os.getcwd)

    def __call__(self) -> JobResult | JobError:
        if os.path.isdir(self.cwd):  # relative paths in the job (its run folders) mean the driver's
            os.chdir(self.cwd)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        try:
            with _exclusive(self.folder) as current:
                if not current:
                    return JobError("the job was recorded while this worker waited for it")
                done = read_result(self.folder)
                if done is not None:  # finished before: hand it back again, never run it twice
                    return done
                checkpoints = self.folder / "checkpoints"
                records, epochs = self.run_job(self.job, self.threads, checkpoints, self.settings)
                result = JobResult(list(records), int(epochs), time.perf_counter() - start)
                payload = {"records": result.records, "epochs_used": epochs, "seconds": result.seconds}
                save_text(dumps(payload), self.folder / RESULT)
                shutil.rmtree(self.folder / "checkpoints", ignore_errors=True)
                return result
        except Exception as e:
            return JobError(one_line(e))
        finally:
            torch.set_num_threads(previous)


Finished = tuple[str, "JobResult | JobError | BaseException"]


class Executor(ABC):
    """Runs :class:`JobTask`\\ s somewhere and says when each is finished; the driver does the rest.

    ``submit`` returns a handle (a string the store keeps); ``poll`` returns the handles finished since
    the last call with their outcome (a :class:`JobResult`, a :class:`JobError`, or the exception that
    says the worker was lost). ``attach`` takes over a handle submitted by a driver that has since died.
    """

    name: ClassVar[str]

    def __init__(self, cfg: ExecutorConfig, *, paths: SweepPaths, jobs: int | None = None) -> None:
        self.cfg = cfg
        self.paths = paths  # the sweep's files
        self.threads = cfg.cpus_per_job or 1
        self.capacity: int | None = cfg.parallel if cfg.parallel is not None else jobs

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(interrupted=exc[0] is not None)

    @abstractmethod
    def submit(self, task: JobTask) -> str: ...

    @abstractmethod
    def poll(self, timeout: float) -> list[Finished]: ...

    def attach(self, job: Job, handle: str | None) -> str | None:
        """Follow ``job`` as an earlier driver submitted it (``handle``, as the store kept it;
        None if that driver died before keeping it), if it still runs or has finished on the cluster;
        returns the handle followed, or None when it is gone (the driver then submits the job again)."""
        return None

    def running(self) -> int | None:
        """How many of the submitted jobs the executor says are running (None: it cannot tell, all are)."""
        return None

    def describe(self, job: Job, handle: str) -> str:
        """What the executor knows of ``job``, submitted as ``handle``, now (``haloprune sweep --status``)."""
        return "unknown"

    def close(self, interrupted: bool = False) -> None:
        """Release the executor; ``interrupted``: the driver is stopping early (Ctrl-C)."""
        return None
