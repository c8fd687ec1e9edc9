"""One job of a matrix config run exactly as ``haloprune sweep`` runs it (its data, model, recipe, seed and
target; 1 thread), with target mode's prototype variants of ``target_variants.py`` patched into its HALO
penalty before the first step; prints the job's record as one JSON line. Nothing is stored.

    python benchmarks/sweep_variant.py configs/matrix/gpt-bytes.toml halo 0 0.9 --ramp-steps 0.1 0.75
    python benchmarks/sweep_variant.py configs/matrix/lenet5-sgd.toml halo-hard 0 0.995
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rerun_job import one_job
from target_variants import adam_geometry, hold_zeros, lam_signal, ramp_in_budget, ramp_in_steps

from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.sweep import run_job
from haloprune.training.callbacks import Callback, FitState


class Patch(Callback):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.done = args, False

    def on_epoch_start(self, state: FitState) -> None:
        halo = state.penalty
        if self.done or halo is None or getattr(halo, "target", None) is None:
            return
        self.done = True
        a = self.args
        if a.ramp_steps is not None:
            ramp_in_steps(halo, state.epochs * state.steps_per_epoch, *a.ramp_steps)
        if a.ramp_budget is not None:
            ramp_in_budget(halo, *a.ramp_budget)
        if a.max_shrink is not None:
            halo.target.max_shrink = a.max_shrink * halo.lambda_min**2
        if a.hold_zeros:
            hold_zeros(halo)
        if a.lam_signal is not None:
            self.sig = lam_signal(halo, a.lam_signal)
        if a.adam_geometry is not None:
            adam_geometry(halo, a.adam_geometry, state.optimizer, a.per_tensor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("method")
    ap.add_argument("seed", type=int)
    ap.add_argument("target", type=float)
    ap.add_argument("--ramp-steps", type=float, nargs=2, default=None)
    ap.add_argument("--ramp-budget", type=float, nargs=2, default=None)
    ap.add_argument("--max-shrink", type=float, default=None)
    ap.add_argument("--hold-zeros", action="store_true")
    ap.add_argument("--lam-signal", type=float, default=None, metavar="PSI_SCALE")
    ap.add_argument("--adam-geometry", type=float, default=None, metavar="POWER")
    ap.add_argument("--per-tensor", action="store_true")
    args = ap.parse_args()
    job = one_job(load_sweep_config(args.config), args.method, args.seed, args.target)
    start = time.perf_counter()
    records, _ = run_job(job, threads=1, callbacks=[Patch(args)], save_state=False)
    keep = (
        "accuracy",
        "val_accuracy",
        "bits_per_byte",
        "val_bits_per_byte",
        "achieved_sparsity",
        "unpruned_accuracy",
        "unpruned_bits_per_byte",
    )
    (rec,) = records
    print(
        json.dumps(
            {
                **vars(args),
                **{k: rec[k] for k in keep if k in rec},
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
