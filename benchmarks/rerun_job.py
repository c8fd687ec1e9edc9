"""Run one job of a sweep again, printing every epoch's metrics row (HALO's controller and λ statistics
included) and the kept weights' magnitudes: to see *when* something happened in a stored result.

    python benchmarks/rerun_job.py configs/matrix/vit-finetune.toml halo 2 0.98
    python benchmarks/rerun_job.py configs/matrix/vit-finetune.toml halo 2 0.98 \\
        --set methods.halo.params.penalty.max_shrink=1.0

Arguments: the sweep config, the method, the seed and the target sparsity of the job; ``--set`` overrides
as ``haloprune sweep`` takes them (an override makes another job, with its own key); ``--quick`` the
config's CI scale. The job uses the
sweep's stored pre-trained network where it has one (run the sweep first); nothing is written to the
sweep's store or state files. The last line is the job's records as JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from haloprune.experiments import sweep
from haloprune.experiments.config import SweepConfig, load_sweep_config
from haloprune.experiments.jobs import Job
from haloprune.training.callbacks import Callback, FitState

ROW = (
    "epoch",
    "train_ce",
    "val_accuracy",
    "density",
    "target_density",
    "xi",
    "c_hat",
    "lambda_median",
    "lambda_p99",
    "lambda_at_floor",
    "budget_spent",
    "lr",
)


class EpochRows(Callback):
    """Prints the row's main entries and the kept weights' |w| (median, 90th percentile, largest)."""

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        shown = {k: round(v, 5) if isinstance(v, float) else v for k in ROW if (v := row.get(k)) is not None}
        weights = [p.detach().abs().flatten() for p in state.model.parameters() if p.dim() > 1]
        kept = torch.cat(weights)
        kept = kept[kept > 0]
        if kept.numel():
            shown["kept_abs_w"] = [round(float(q), 4) for q in kept.quantile(torch.tensor([0.5, 0.9]))]
            shown["kept_abs_w"].append(round(float(kept.max()), 4))
        print(json.dumps(shown), flush=True)


def one_job(cfg: SweepConfig, method: str, seed: int, sparsity: float) -> Job:
    """The one job of ``cfg`` for ``method``, ``seed`` and target ``sparsity`` (a clear exit otherwise)."""
    jobs = [j for j in sweep.expand(cfg) if j.method == method and j.seed == seed and j.sparsity == sparsity]
    if len(jobs) != 1:
        raise SystemExit(f"{len(jobs)} jobs match {method}, seed {seed}, sparsity {sparsity}")
    return jobs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("method")
    ap.add_argument("seed", type=int)
    ap.add_argument("sparsity", type=float)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the config's [quick] scale (CI-sized)")
    args = ap.parse_args()
    job = one_job(
        load_sweep_config(args.config, args.set, quick=args.quick), args.method, args.seed, args.sparsity
    )
    print(f"job {job.key}", flush=True)
    records, _ = sweep.run_job(job, threads=args.threads, callbacks=[EpochRows()], save_state=False)
    print(json.dumps(records))


if __name__ == "__main__":
    main()
