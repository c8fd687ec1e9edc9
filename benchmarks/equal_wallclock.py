"""Seconds per training epoch of each method's regime, side by side, and the epochs each baseline gets at
the wall-clock of target-sparsity HALO's 20 epochs.

Regimes (one epoch of ``haloprune.training.fit`` on real Fashion-MNIST, LeNet-300-100 or LeNet-5, batch 100,
each in interleaved rounds, medians): ``dense`` (what magnitude pruning, fine-tuning and IMP train with),
``masked`` (a pruned network trained with its mask: GMP after its first prune, fine-tuning, IMP rounds),
``l1`` (penalty through autograd), ``halo-target`` (fused proximal HALO with its controller).

    python benchmarks/equal_wallclock.py [--model lenet-5] [--rounds 5] [--threads 1] [--epochs 20]

The last line is ``epochs_at_equal_wallclock=<regime>:<epochs>,...`` (rounded to whole epochs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from haloprune import HALO, global_magnitude_prune
from haloprune.build import load_data
from haloprune.config import DataConfig, OptimConfig, PenaltyConfig
from haloprune.models import build_model
from haloprune.penalties import L1
from haloprune.training.loop import fit


def one_epoch(regime: str, data, optim: OptimConfig, arch: str) -> float:
    torch.manual_seed(0)
    model = build_model(arch)
    penalty, pen_cfg = None, None
    if regime == "masked":
        global_magnitude_prune(model, 0.98)
    elif regime == "l1":
        penalty, pen_cfg = L1(model, xi=1e-4), PenaltyConfig(name="l1", xi=1e-4)
    elif regime == "halo-target":
        penalty = HALO(model, target_sparsity=0.98)
        pen_cfg = PenaltyConfig(name="halo", target_sparsity=0.98)
    t0 = time.perf_counter()
    fit(model, data, optim, epochs=1, penalty=penalty, penalty_cfg=pen_cfg, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet-300-100", choices=["lenet-300-100", "lenet-5"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=20, help="target-sparsity HALO's budget in epochs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(), seed=0)
    optim = OptimConfig(epochs=args.epochs)
    regimes = ["dense", "masked", "l1", "halo-target"]
    for r in regimes:  # warm-up (compilation of the fused step, allocator)
        one_epoch(r, data, optim, args.model)
    times: dict[str, list[float]] = {r: [] for r in regimes}
    for _ in range(args.rounds):
        for r in regimes:
            times[r].append(one_epoch(r, data, optim, args.model))
    med = {r: statistics.median(v) for r, v in times.items()}
    print(f"threads={args.threads} rounds={args.rounds} (seconds per epoch incl. validation; medians)")
    print("| regime | s/epoch | vs halo-target | epochs at equal wall-clock |")
    print("|---|---:|---:|---:|")
    equal = {}
    for r in regimes:
        ratio = med[r] / med["halo-target"]
        equal[r] = max(1, round(args.epochs / ratio))
        print(f"| {r} | {med[r]:.3f} | {ratio:.3f} | {equal[r]} |")
    print("epochs_at_equal_wallclock=" + ",".join(f"{r}:{e}" for r, e in equal.items()))


if __name__ == "__main__":
    main()
