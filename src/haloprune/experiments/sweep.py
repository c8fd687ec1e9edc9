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
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from haloprune.build import load_data, source_digest
from haloprune.config import DataConfig, RunConfig, deep_merge
from haloprune.core.io import save_torch
from haloprune.data import SplitData
from haloprune.experiments.config import PRETRAIN, SweepConfig
from haloprune.experiments.report import log_pruned
from haloprune.experiments.runner import Job
from haloprune.integrations.loggers import job_logger
from haloprune.methods import METHODS, Context
from haloprune.training.callbacks import ExperimentLog, set_bar_slot


def expand(cfg: SweepConfig) -> list[Job]:
    """All jobs of a sweep, in a stable order (its ``pretrain`` jobs first)."""
    jobs = []
    run = cfg.run_part()
    # the weights model.init_from names define the jobs (a changed file makes new jobs), not only its path
    digest = {"init_sha256": source_digest(cfg.model.init_from)} if cfg.model.init_from else {}
    states = str(Path(cfg.db).parent / cfg.name / "states")
    pretrained: dict[int, Job] = {}
    if cfg.pretrain is not None:
        dense = deep_merge(run, {"optim": cfg.pretrain.optim_update()})
        for seed in cfg.seeds:
            spec = {"run": dense, "kind": "penalty", "params": {"penalty": {"name": "none"}}}
            spec |= {"sparsities": list(cfg.sparsities), "states": states}
            pretrained[seed] = Job(cfg.name, PRETRAIN, seed, None, spec, {}, ("states",))
        jobs.extend(pretrained.values())
    for method, spec in cfg.methods.items():
        per_sparsity = METHODS[spec.kind].per_sparsity
        update = spec.optim_update()
        budget = deep_merge(run, {"optim": update}) if update else run
        for i, params in enumerate(spec.points()):
            hyper = spec.grid[i] if spec.grid else {}
            for seed in cfg.seeds:
                targets: list[float | None] = list(cfg.sparsities) if per_sparsity else [None]
                for s in targets:
                    job_spec = {
                        "run": budget,
                        "kind": spec.kind,
                        "params": params,
                        "sparsities": list(cfg.sparsities),
                        "states": states,
                        **digest,
                    }
                    # Where the state goes never changes a result; a per-target job reads only its own target.
                    ignored = ("states", "sparsities") if per_sparsity else ("states",)
                    needs: tuple[str, ...] = ()
                    if seed in pretrained:  # what it starts from, and where that is kept
                        pre = pretrained[seed]
                        job_spec["pretrain"] = pre.result_spec()
                        job_spec["init_state"] = str(Path(states) / f"{pre.key}.pt")
                        ignored, needs = (*ignored, "init_state"), (pre.key,)
                    jobs.append(Job(cfg.name, method, seed, s, job_spec, hyper, ignored, needs))
    return jobs


def copy_state(job: Job, source: dict[str, Any]) -> None:
    """After ``job`` took over ``source``'s results: copy the source's saved state next to the job's."""
    src = Path(source["config"]["states"]) / f"{source['key']}.pt"
    if src.is_file():
        dst = Path(job.spec["states"]) / f"{job.key}.pt"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


@functools.lru_cache(maxsize=4)
def _data(data: DataConfig, seed: int, device: str) -> SplitData:
    """Per worker process: the jobs of one seed share their dataset."""
    return load_data(data, seed, device)


def run_job(job: Job, threads: int, checkpoints: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """Run one job (in a worker): returns its records and the epochs every network received. With
    ``checkpoints``, every fit of the method checkpoints each epoch there, and a job run again with the
    same folder resumes exactly where it stopped."""
    spec = job.spec
    run = RunConfig.model_validate({**spec["run"], "seed": job.seed})
    if "init_state" in spec:  # fine-tuning from the sweep's dense pre-training
        run = run.model_copy(update={"model": run.model.model_copy(update={"init_from": spec["init_state"]})})
    torch.set_num_threads(threads)
    set_bar_slot(max(1, (multiprocessing.current_process()._identity or (1,))[0]))
    progress = False if os.environ.get("HALOPRUNE_PROGRESS") == "0" else None
    data = _data(run.data, job.seed, run.device)
    logger = job_logger(job.sweep, job.method, job.seed, job.sparsity)
    ctx = Context(
        run=run,
        data=data,
        seed=job.seed,
        device=torch.device(run.device),
        progress=progress,
        name=f"{job.method}/s{job.seed}",
        callbacks=[ExperimentLog(logger)] if logger is not None else [],
        checkpoints=checkpoints,
    )
    method = METHODS[spec["kind"]](**spec["params"])
    targets = [job.sparsity] if job.sparsity is not None else spec["sparsities"]
    try:
        if logger is not None:
            logger.log_config({"job": job.key, "hyperparameters": job.hyperparameters, **spec})
        outcome = method.run(ctx, targets)
        if logger is not None:
            figure = Path(spec["states"]) / f"{job.key}.accuracy_vs_sparsity.png"
            log_pruned(
                logger, [{"method": job.method, **r} for r in outcome.records], outcome.epochs_used, figure
            )
    finally:
        if logger is not None:
            logger.close()
    epochs = outcome.epochs_used + (spec["pretrain"]["run"]["optim"]["epochs"] if "pretrain" in spec else 0)
    if outcome.state:
        save_torch(outcome.state, Path(spec["states"]) / f"{job.key}.pt")
    records = [
        {
            **r,
            "method": job.method,
            "kind": spec["kind"],
            "seed": job.seed,
            "hyperparameters": job.hyperparameters,
            "epochs": epochs,
        }
        for r in outcome.records
    ]
    return records, epochs
