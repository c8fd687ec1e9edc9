"""Where a sweep keeps its files: the one place that says so (the driver, its executors, its workers and
its report all ask a :class:`SweepPaths`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def state_file(states: str | Path, key: str) -> Path:
    """The final state of job ``key`` in the folder ``states`` (a job's spec names its folder)."""
    return Path(states) / f"{key}.pt"


@dataclass(frozen=True)
class SweepPaths:
    """The files of the sweep ``name`` whose results store is ``db``: everything under its folder
    ``<db folder>/<name>/`` (which must be on a file system the workers share with the driver)::

        <db folder>/                the store; the experiment loggers' files (``root``)
          <name>/                   report.md, results.json, the figures (``folder``)
            states/<key>.pt         each job's final state, written by its worker (``state``)
            jobs/<key>/             a job's work folder while it runs: checkpoints, its result (``work``)
            submitit/<key>/<id>/    the submitit executor's pickles and logs (``submitit``)
    """

    db: Path
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "db", Path(self.db))

    @property
    def root(self) -> Path:
        return self.db.parent

    @property
    def folder(self) -> Path:
        return self.root / self.name

    @property
    def report(self) -> Path:
        return self.folder / "report.md"

    @property
    def states(self) -> Path:
        return self.folder / "states"

    def state(self, key: str) -> Path:
        return state_file(self.states, key)

    def work(self, key: str) -> Path:
        return self.folder / "jobs" / key

    @property
    def submitit(self) -> Path:
        return self.folder / "submitit"
