"""What a sweep is made of: :class:`Job` (one independent unit, keyed by the hash of what defines it),
:class:`JobSpec` (what defines a job of a sweep config) and :class:`WorkerSettings` (what a worker is told
with each job besides: the data folder, progress bars, logging; never part of a key).

A job's ``spec`` is any JSON-able mapping to the driver and the store: they hash it, keep it and compare
it, never read it. A sweep config's jobs carry a :class:`JobSpec`, a typed mapping whose entries are its
JSON form, so its key is the one its plain-dict form had.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from haloprune.config import DataConfig, LoggingConfig, RunConfig
from haloprune.experiments.paths import state_file

_OPTIONAL = ("states", "init_sha256", "pretrain", "init_state")


@dataclass(frozen=True, eq=False)
class JobSpec(Mapping[str, Any]):
    """What defines one job of a sweep config besides its sweep, method name, seed and target.

    ``run``: the run config it trains (as JSON, without the seed); ``kind`` and ``params``: the registered
    method and its parameters; ``sparsities``: the sweep's targets (a per-target job reads only its own);
    ``states``: the folder its final state goes to. With a ``[pretrain]``: ``pretrain``, the spec of the
    dense job it starts from as its results see it (no ``states``), and ``init_state``, where that job's
    state is.
    With ``model.init_from``: ``init_sha256``, the file's digest (a changed file makes new jobs).

    As a mapping it is its JSON form (entries that are None left out): what a job's key hashes and the
    results store keeps; equal to a plain dict of the same entries.
    """

    run: dict[str, Any]
    kind: str
    params: dict[str, Any]
    sparsities: tuple[float, ...]
    states: str | None = None
    init_sha256: str | None = None
    pretrain: JobSpec | None = None
    init_state: str | None = None

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> JobSpec:
        """``spec`` as a :class:`JobSpec`: itself, or parsed from its JSON form (a run kept in the store)."""
        if isinstance(spec, JobSpec):
            return spec
        unknown = sorted(set(spec) - {"run", "kind", "params", "sparsities", *_OPTIONAL})
        if unknown:
            raise ValueError(f"not a sweep job's spec: unknown entries {', '.join(unknown)}")
        pretrain = spec.get("pretrain")
        return cls(
            run=spec["run"],
            kind=spec["kind"],
            params=spec["params"],
            sparsities=tuple(spec["sparsities"]),
            states=spec.get("states"),
            init_sha256=spec.get("init_sha256"),
            pretrain=None if pretrain is None else cls.of(pretrain),
            init_state=spec.get("init_state"),
        )

    @functools.cached_property
    def _json(self) -> dict[str, Any]:
        out = {"run": self.run, "kind": self.kind, "params": self.params, "sparsities": list(self.sparsities)}
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value) if isinstance(value, JobSpec) else value
        return out

    def __getitem__(self, key: str) -> Any:
        return self._json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)

    @property
    def epochs(self) -> int:
        """The epochs of its run's training (the budget the reports count)."""
        return int(self.run["optim"]["epochs"])

    def state_file(self, key: str) -> Path:
        """Where the job ``key`` of this spec saves its final state."""
        if self.states is None:
            raise ValueError(f"job {key}: its spec names no states folder")
        return state_file(self.states, key)

    def run_config(self, seed: int) -> RunConfig:
        """The run config the job trains with ``seed`` (starting from ``init_state`` when it has one)."""
        run = RunConfig.model_validate({**self.run, "seed": seed})
        if self.init_state is None:
            return run
        return run.model_copy(update={"model": run.model.model_copy(update={"init_from": self.init_state})})


@dataclass(frozen=True)
class Job:
    """One independent unit of a sweep; ``spec`` and ``hyperparameters`` must be JSON-able.

    ``spec`` is what defines the job's results (a :class:`JobSpec` for a sweep config's jobs; any mapping
    to the driver and the store). ``sparsity`` is None when one run serves every sparsity (its records then
    carry their own). ``not_in_result`` names the ``spec`` entries that do not change the job's results
    (where its outputs go, a list it does not read): two jobs equal up to those entries, the sweep and the
    method's name compute the same thing, so a sweep can take over the other's results
    (:meth:`ResultStore.adopt`). ``needs`` are the keys of jobs that must be done first (e.g. the dense
    pre-training a fine-tuning job starts from); the runner runs jobs in stages so that every job's needs
    are done before it starts.
    """

    sweep: str
    method: str
    seed: int
    sparsity: float | None
    spec: Mapping[str, Any]
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
        payload = [self.sweep, self.method, int(self.seed), sparsity, dict(self.spec), self.hyperparameters]
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def key(self) -> str:
        """First 16 hex digits of the SHA-256 of the job's canonical JSON: stable across runs and machines."""
        return hashlib.sha256(self._canonical().encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.key)

    def result_spec(self, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``spec`` (default: this job's) without the entries that do not change the results, as JSON."""
        spec = self.spec if spec is None else spec
        return {k: v for k, v in dict(spec).items() if k not in self.not_in_result}


def data_in(data: DataConfig, data_dir: str | Path | None) -> DataConfig:
    """``data`` read from ``data_dir`` when it names no folder itself (a worker's setting, never in a key)."""
    if data_dir is None or data.dir is not None:
        return data
    return data.model_copy(update={"dir": str(data_dir)})


@dataclass(frozen=True)
class WorkerSettings:
    """What a sweep's worker is told with each job besides the job (the same on every executor; never part
    of a job's key): ``data_dir``, the dataset folder for runs whose config names none; ``progress``, the
    per-run progress bars (None: when the output is a terminal) and ``bar_slot``, their line under the
    sweep's bar (the driver gives each job in flight its own); ``logging``, the tracker each job logs to as
    a run of its own, its files under ``log_dir`` (a sweep's: its store's folder)."""

    data_dir: str | None = None
    progress: bool | None = None
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    log_dir: str = "."
    bar_slot: int = 1
