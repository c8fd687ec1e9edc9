"""A sweep config → jobs → worker runs → the results store (``haloprune sweep``).

Every (method, grid point, seed) is a job; methods whose procedure depends on the target sparsity
(``per_sparsity``) get one job per target. A job's key hashes everything that defines it, so changing the
config makes new jobs while finished ones are skipped on a rerun. Each finished job also saves its final
state (``runs/<sweep>/states/<key>.pt``) for the report's plots. A job that another sweep in the same
store has already run (same method kind, parameters, run config, seed and target) takes over its
results and state instead of running again.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from haloprune.build import load_data, source_digest
from haloprune.config import DataConfig, OptimConfig, deep_merge
from haloprune.core.io import save_torch
from haloprune.data import SplitData
from haloprune.data.datasets import ENV_VAR as DATA_ENV
from haloprune.experiments.config import PRETRAIN, SweepConfig
from haloprune.experiments.jobs import Job, JobSpec, WorkerSettings, data_in
from haloprune.experiments.paths import state_file
from haloprune.experiments.report import log_pruned
from haloprune.integrations.loggers import build_logger
from haloprune.methods import METHODS, Context
from haloprune.training.callbacks import Callback, ExperimentLog, ExperimentLogger, set_bar_slot


def _finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float written as its string (``"inf"``, ``"-inf"``, ``"nan"``):
    a job's key is strict JSON, and the configs read those strings back as the same floats (e.g.
    ``max_shrink = inf``, HALO's unbounded shrinkage)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def expand(cfg: SweepConfig) -> list[Job]:
    """All jobs of a sweep, in a stable order (its ``pretrain`` jobs first)."""
    jobs = []
    run = cfg.run_part()
    # the weights model.init_from names define the jobs (a changed file makes new jobs), not only its path
    digest = source_digest(cfg.model.init_from) if cfg.model.init_from else None
    paths = cfg.paths
    states = str(paths.states)
    sparsities = tuple(cfg.sparsities)
    pretrained: dict[int, Job] = {}
    if cfg.pretrain is not None:
        dense = deep_merge(run, {"optim": cfg.pretrain.optim_update()})
        dense_spec = JobSpec(dense, "penalty", {"penalty": {"name": "none"}}, sparsities, states)
        for seed in cfg.seeds:
            pretrained[seed] = Job(cfg.name, PRETRAIN, seed, None, dense_spec, {}, ("states",))
        jobs.extend(pretrained.values())
    for method, m in cfg.methods.items():
        per_sparsity = METHODS[m.kind].per_sparsity
        update = m.optim_update()
        budget = deep_merge(run, {"optim": update}) if update else run
        optimizer = OptimConfig.model_validate(budget["optim"]).optimizer
        for i, params in enumerate(_finite(METHODS[m.kind].job_params(p, optimizer)) for p in m.points()):
            hyper = _finite(m.grid[i]) if m.grid else {}
            targets: list[float | None] = list(sparsities) if per_sparsity else [None]
            for seed in cfg.seeds:
                pre = pretrained.get(seed)  # what it starts from, and where that is kept
                spec = JobSpec(
                    budget,
                    m.kind,
                    params,
                    sparsities,
                    states,
                    init_sha256=digest,
                    pretrain=None if pre is None else JobSpec.of(pre.result_spec()),
                    init_state=None if pre is None else str(paths.state(pre.key)),
                )
                # Where the state goes never changes a result; a per-target job reads only its own target.
                ignored = ("states", "sparsities") if per_sparsity else ("states",)
                if pre is not None:
                    ignored += ("init_state",)
                needs = () if pre is None else (pre.key,)
                for s in targets:
                    jobs.append(Job(cfg.name, method, seed, s, spec, hyper, ignored, needs))
    return jobs


def worker_settings(
    cfg: SweepConfig, *, data_dir: str | Path | None = None, progress: bool | None = None
) -> WorkerSettings:
    """What ``haloprune sweep`` tells the workers of ``cfg`` (pass it to ``run_sweep`` to do the same from
    Python): the dataset folder ``data_dir`` (default the driver's ``$HALOPRUNE_DATA``, so that jobs on
    other machines look where the driver would), the per-run progress bars, and each job logged as
    ``cfg.logging`` says, its files beside the store."""
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    return WorkerSettings(
        data_dir=None if data_dir is None else str(data_dir),
        progress=progress,
        logging=cfg.logging,
        log_dir=str(cfg.paths.root),
    )


def copy_state(job: Job, source: dict[str, Any]) -> None:
    """After ``job`` took over ``source``'s results (a run of the store): copy the source's saved state next
    to the job's."""
    src = state_file(source["config"]["states"], source["key"])
    if src.is_file():
        dst = JobSpec.of(job.spec).state_file(job.key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


@functools.lru_cache(maxsize=4)
def _data(data: DataConfig, seed: int, device: str) -> SplitData:
    """Per worker process: the jobs of one seed share their dataset."""
    return load_data(data, seed, device)


def _logger(job: Job, settings: WorkerSettings) -> ExperimentLogger | None:
    """The job's run in the tracker ``settings.logging`` names (None: not logging)."""
    target = f"/{job.sparsity:g}" if job.sparsity is not None else ""
    name = f"{job.sweep}/{job.method}/s{job.seed}{target}"
    return build_logger(settings.logging, name, settings.log_dir, group=job.sweep)


def run_job(
    job: Job,
    threads: int,
    checkpoints: Path | None = None,
    settings: WorkerSettings | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    save_state: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """Run one job (in a worker) as ``settings`` say: returns its records and the epochs every network
    received. With ``checkpoints``, every fit of the method checkpoints each epoch there, and a job run
    again with the same folder resumes exactly where it stopped. ``callbacks`` go to every fit of the
    method; ``save_state=False`` leaves the job's state file alone (a job run again to look at it)."""
    settings = settings if settings is not None else WorkerSettings()
    spec = JobSpec.of(job.spec)
    run = spec.run_config(job.seed)
    run = run.model_copy(update={"data": data_in(run.data, settings.data_dir)})
    torch.set_num_threads(threads)
    set_bar_slot(settings.bar_slot)
    data = _data(run.data, job.seed, run.device)
    logger = _logger(job, settings)
    ctx = Context(
        run=run,
        data=data,
        seed=job.seed,
        device=torch.device(run.device),
        progress=settings.progress,
        name=f"{job.method}/s{job.seed}",
        callbacks=[*([ExperimentLog(logger)] if logger is not None else []), *callbacks],
        checkpoints=checkpoints,
    )
    method = METHODS[spec.kind](**spec.params)
    targets = [job.sparsity] if job.sparsity is not None else list(spec.sparsities)
    state = spec.state_file(job.key)
    try:
        if logger is not None:
            logger.log_config({"job": job.key, "hyperparameters": job.hyperparameters, **spec})
        outcome = method.run(ctx, targets)
        if logger is not None:
            figure = state.with_name(f"{job.key}.accuracy_vs_sparsity.png")
            log_pruned(
                logger, [{"method": job.method, **r} for r in outcome.records], outcome.epochs_used, figure
            )
    finally:
        if logger is not None:
            logger.close()
    epochs = outcome.epochs_used + (spec.pretrain.epochs if spec.pretrain is not None else 0)
    if outcome.state and save_state:
        save_torch(outcome.state, state)
    records = [
        {
            **r,
            "method": job.method,
            "kind": spec.kind,
            "seed": job.seed,
            "hyperparameters": job.hyperparameters,
            "epochs": epochs,
        }
        for r in outcome.records
    ]
    return records, epochs
