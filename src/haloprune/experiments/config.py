"""The sweep config: methods (a registered kind, its parameters, a grid) x seeds x target sparsities on
one run config; ``load_sweep_config`` reads it (``--quick``: the config's CI scale)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from haloprune.config import (
    LoggingConfig,
    OptimConfig,
    PruneConfig,
    Section,
    Setup,
    Sparsity,
    added_field,
    apply_overrides,
    check_acts,
    check_method_names,
    check_penalty_optim,
    check_scope,
    deep_merge,
    load_config,
    one_line,
    validate,
)
from haloprune.core.errors import ConfigError
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.store import DEFAULT_PATH
from haloprune.methods import METHODS
from haloprune.methods.penalty import TargetPenaltyMethod


class SweepMethodConfig(Section):
    """One method of a sweep: a registered kind, its parameters, and a grid chosen on the validation split."""

    kind: str  # a method of haloprune.methods.METHODS ("penalty", "target", "gmp", "finetune", ...)
    params: dict[str, Any] = Field(default_factory=dict)  # the method's parameters (its Params)
    grid: list[dict[str, Any]] = Field(default_factory=list)  # each point is merged into params
    # this method's budget in epochs instead of optim.epochs (e.g. equal wall-clock instead of equal epochs)
    epochs: int | None = added_field(None, gt=0)
    # optim keys this method sets differently from the sweep's (e.g. the HALO reference's CIFAR HALO runs
    # decay the lr twice per milestone: {gamma = [0.1, 0.01]}); merged into optim
    optim: dict[str, Any] = added_field({})

    @model_validator(mode="after")
    def _check(self) -> SweepMethodConfig:
        if self.kind not in METHODS:
            raise ValueError(f"unknown method kind {self.kind!r}; known: {', '.join(METHODS.names())}")
        for i, params in enumerate(self.points()):
            try:
                METHODS[self.kind].Params(**params)
            except ValidationError as err:
                where = f"grid point {i}" if self.grid else "params"
                raise ValueError(f"{where}: {one_line(err, '').split(': ', 1)[1]}") from None
        return self

    def optim_update(self) -> dict[str, Any]:
        """What this method sets differently in ``optim`` (its ``optim`` and ``epochs``)."""
        return dict(self.optim) | ({"epochs": self.epochs} if self.epochs is not None else {})

    def run_optim(self, optim: OptimConfig) -> OptimConfig:
        """The sweep's ``optim`` with this method's overrides merged in."""
        return merged_optim(optim, self.optim_update())

    def points(self) -> list[dict[str, Any]]:
        """The full parameters of every grid point (just ``params`` without a grid)."""
        return [deep_merge(self.params, p) for p in self.grid] if self.grid else [dict(self.params)]


def merged_optim(optim: OptimConfig, update: dict[str, Any]) -> OptimConfig:
    """``optim`` with the keys of ``update`` set (a ValueError naming the bad key otherwise)."""
    if not update:
        return optim
    try:
        return OptimConfig.model_validate(deep_merge(optim.model_dump(), update))
    except ValidationError as err:
        raise ValueError(f"optim: {one_line(err, '').split(': ', 1)[1]}") from None


EXECUTOR_NAMES = ("local", "submitit", "ray")
# the settings that only one executor reads: giving one to another executor is an error, not ignored
EXECUTOR_SETTINGS = {
    "cluster": "submitit",
    "folder": "submitit",
    "partition": "submitit",
    "mem_gb": "submitit",
    "timeout_min": "submitit",
    "slurm": "submitit",
    "address": "ray",
    "num_cpus": "ray",
}


class ExecutorConfig(Section):
    """``[executor]`` (or ``--executor``): where a sweep's jobs run. Never part of a job's key: the same
    sweep gives the same jobs and results on any executor. Only the driver (the ``haloprune sweep``
    process) writes the results store; the run folders (``<db folder>/<sweep>/``) must be on a file
    system the workers share with it."""

    name: Literal["local", "submitit", "ray"] = "local"  # local processes, SLURM (submitit), or Ray
    # every executor: torch threads and CPUs per job (default: local, the machine's cores / --jobs;
    # submitit and ray: 1), GPUs per job, and how often a job whose worker died (killed, preempted
    # without notice, node lost) is submitted again: it resumes from its last end-of-epoch checkpoint
    cpus_per_job: int | None = Field(None, gt=0)
    gpus_per_job: int = Field(0, ge=0)
    max_retries: int = Field(2, ge=0)
    # jobs in flight at once (default: local --jobs; submitit's local cluster and ray: as many as the
    # CPUs allow; SLURM: every job, the scheduler queues them)
    parallel: int | None = Field(None, gt=0)
    # submitit: "slurm", "local" (this machine, same code path: how it is tested) or "auto" (SLURM when
    # sbatch is there); its logs and pickles (default <db folder>/<sweep>/submitit); SLURM resources
    cluster: Literal["auto", "slurm", "local"] = "auto"
    folder: str | None = None
    partition: str | None = None
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(24 * 60, gt=0)  # SLURM's time limit per job; on timeout a job is requeued
    slurm: dict[str, Any] = Field(default_factory=dict)  # any other slurm_* setting: {account = "x"}
    # ray: the cluster's address ("auto", "ray://head:10001"); None starts a local one with num_cpus
    address: str | None = None
    num_cpus: int | None = Field(None, gt=0)

    def check(self) -> None:
        """Refuse a setting of another executor (``partition`` for ray): it would be ignored. Checked when
        the executor is built, so that ``--executor`` may set another executor's settings aside first."""
        for key, owner in EXECUTOR_SETTINGS.items():
            if owner != self.name and key in self.model_fields_set:
                why = f"a setting of the {owner} executor, not of {self.name!r}"
                raise ConfigError(f"executor.{key} is {why}")
        if self.address is not None and self.num_cpus is not None:
            raise ConfigError("executor.num_cpus sizes a local Ray cluster: give it or address, not both")


PRETRAIN = "pretrain"  # the method name of a sweep's dense pre-training job


class PretrainConfig(Section):
    """The dense network every method of a sweep starts from, trained once per seed (the sweep's job
    ``pretrain``, whose records are that network pruned once without fine-tuning). Its epochs count in
    the reported budget of every method that starts from it."""

    epochs: int = Field(gt=0)  # of the dense pre-training
    # optim keys the pre-training sets differently from the sweep's (the sweep's optim is the fine-tuning)
    optim: dict[str, Any] = Field(default_factory=dict)

    def optim_update(self) -> dict[str, Any]:
        return dict(self.optim) | {"epochs": self.epochs}


class SweepConfig(Setup):
    """A comparison: methods x grid points x seeds (x target sparsities) on one setup, run by
    ``haloprune sweep``; its store is ``db``, its report and states go to ``<db folder>/<name>/``
    (:attr:`paths`)."""

    name: str = Field("sweep", pattern=r"^[A-Za-z0-9._-]+$")  # its jobs, report and run folders
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(default_factory=lambda: [0, 1, 2])  # per job
    # the target sparsities: every method is pruned to (or told, target methods) each of them
    sparsities: list[Sparsity] = Field(default_factory=lambda: [0.9, 0.95, 0.98, 0.99])
    methods: dict[str, SweepMethodConfig]  # by the name the report gives it: [methods.halo], [methods.gmp]
    db: str = str(DEFAULT_PATH)  # the SQLite results store (finished jobs are skipped)
    quick: dict[str, Any] = Field(default_factory=dict)  # dotted overrides applied by --quick
    # a dense pre-training job every method starts from (fine-tuning studies); None: from scratch
    pretrain: PretrainConfig | None = added_field(None)
    # the sweep in a summary of several (``haloprune report A.toml B.toml --summary``): what it is, in a
    # few words, and the two methods whose per-seed difference is its line (["halo", "gmp"]); neither
    # changes a job
    title: str | None = added_field(None)
    compare: tuple[str, str] | None = added_field(None)
    logging: LoggingConfig = Field(LoggingConfig(), exclude=True)  # each job a logged run; not in any key
    executor: ExecutorConfig = Field(ExecutorConfig(), exclude=True)  # where jobs run; not in any key

    @field_validator("seeds", "sparsities")
    @classmethod
    def _nonempty_list(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("give at least one value")
        return sorted(set(v))

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: dict[str, SweepMethodConfig]) -> dict[str, SweepMethodConfig]:
        return check_method_names(v)

    @model_validator(mode="after")
    def _compared(self) -> SweepConfig:
        if self.compare is not None:
            unknown = [m for m in self.compare if m not in self.methods]
            if unknown or self.compare[0] == self.compare[1]:
                raise ValueError(
                    f"compare: give two different methods of this sweep ({', '.join(self.methods)}), "
                    f"got {list(self.compare)}"
                )
        return self

    @model_validator(mode="after")
    def _targets_here(self) -> SweepConfig:
        if self.prune.sparsities != PruneConfig().sparsities:
            raise ValueError("a sweep's target sparsities are `sparsities`, not prune.sparsities")
        return self

    @model_validator(mode="after")
    def _pretrain(self) -> SweepConfig:
        if self.pretrain is None:
            return self
        if PRETRAIN in self.methods:
            raise ValueError(f"methods.{PRETRAIN}: that name is the [pretrain] job's; rename the method")
        if self.model.init_from is not None:
            raise ValueError("give either model.init_from or [pretrain] (where the methods start), not both")
        try:
            merged_optim(self.optim, self.pretrain.optim_update())
        except ValueError as err:
            raise ValueError(f"pretrain: {err}") from None
        return self

    @model_validator(mode="after")
    def _same_scope(self) -> SweepConfig:
        for name, method in self.methods.items():
            try:
                optim = method.run_optim(self.optim)
            except ValueError as err:
                raise ValueError(f"methods.{name}: {err}") from None
            # a target method sets the penalty's target_sparsity per job: check it as the jobs run it
            target = (
                {"target_sparsity": self.sparsities[0]}
                if issubclass(METHODS[method.kind], TargetPenaltyMethod)
                else {}
            )
            for i, params in enumerate(method.points()):
                if isinstance(params.get("penalty"), dict):
                    where = f"grid point {i}: " if method.grid else ""
                    check_acts(params["penalty"] | target, f"methods.{name}: {where}penalty")
                    check_scope(params["penalty"], self.prune, f"methods.{name}: penalty")
                    check_penalty_optim(params["penalty"], optim, f"methods.{name}: penalty")
            if method.kind == "sparsevd" and self.prune.scope != "all":  # its noise is on every layer
                raise ValueError(
                    f"methods.{name}: sparsevd learns a dropout rate for every layer, so it needs "
                    f"prune.scope = 'all' (got {self.prune.scope!r}); drop it from this sweep"
                )
        return self

    @property
    def paths(self) -> SweepPaths:
        """Where the sweep keeps its files."""
        return SweepPaths(Path(self.db), self.name)

    def run_part(self) -> dict[str, Any]:
        """What every job of the sweep shares (data, model, optimiser, device; the pruning scope if set)."""
        part = self.model_dump(mode="json", include={"data", "model", "optim", "device"})
        prune = self.prune.model_dump(
            mode="json", include={"scope", "recalibrate_bn", "include", "exclude", "of", "zero_below"}
        )
        if prune:  # only what is set (defaults are left out): the keys of earlier jobs stay the same
            part["prune"] = prune
        return part


def load_sweep_config(
    path: str | Path, overrides: list[str] | None = None, quick: bool = False
) -> SweepConfig:
    """Read a sweep config; ``quick`` applies its ``[quick]`` overrides, keeps the first grid point of each
    method and adds a ``-quick`` suffix to the sweep's name (so quick results never mix with full ones)."""
    cfg = load_config(SweepConfig, path, overrides)
    if not quick:
        return cfg
    data = apply_overrides(cfg.model_dump(), [f"{k}={json.dumps(v)}" for k, v in cfg.quick.items()])
    data["name"] = f"{cfg.name}-quick"
    for method in data["methods"].values():  # the first grid point only
        method["grid"] = method["grid"][:1]
    quick = validate(SweepConfig, data, f"{path} with --quick")
    return quick.model_copy(update={"logging": cfg.logging, "executor": cfg.executor})  # not dumped
