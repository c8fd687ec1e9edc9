"""Target mode's exact control and the variants measured against it in docs/results/matrix.md ("the
causes"): one LeNet-300-100 run on real Fashion-MNIST (20 epochs, the matrix's SGD or AdamW recipe), pruned
once to the target, one JSON line with test / validation accuracy, the zeros training left and the λ of
the weights still alive (10th / 50th / 90th percentile).

    python benchmarks/target_variants.py adamw 0.98 0 exact      # the default (the matrix's HALO run)
    python benchmarks/target_variants.py adamw 0.98 0 hard       # ξ = 0 (target_control="hard"): no shrinkage
    python benchmarks/target_variants.py adamw 0.98 0 carry      # ξ carried from the last top-up's cut
    python benchmarks/target_variants.py adamw 0.95 0 freeze     # masks frozen, HALO off: last 25% of steps
    python benchmarks/target_variants.py adamw 0.9 0 exact --ramp-end 0.5
    python benchmarks/target_variants.py sgd 0.98 0 exact --epochs 10 --probe   # λ against |w|, per tenth
    python benchmarks/target_variants.py finetune 0.98 0 exact --lambda-init equilibrium

``finetune`` is the matrix's LeNet-300-100 setting from pretrained weights
(configs/matrix/lenet300-finetune.toml): the seed's dense network, as that sweep trained it (run the sweep
first), then its 5 epochs of SGD.
``--lambda-init equilibrium`` starts λ at the shape of its equilibrium ``(2ξ|w|/ψ)^(1/3)`` for the starting
weights, ``(|w| / mean |w|)^(1/3)`` (then clamped into λ's box), instead of 1 for every weight.

One thread (the matrix's `--jobs 2` runs one per job; the thread count alone moves a seed's result by a
few tenths), so the "exact" run of a seed gives the matrix's number for it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from haloprune import HALO, build_model, global_magnitude_prune, restore_masks
from haloprune.build import init_from, load_data
from haloprune.config import DataConfig, OptimConfig
from haloprune.penalties.halo.target import TargetMode
from haloprune.training.callbacks import Callback, FitState
from haloprune.training.evaluate import evaluate
from haloprune.training.loop import fit

RECIPES = {  # the matrix's LeNet-300-100 settings (configs/matrix/lenet300-*.toml)
    "sgd": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "adamw": {"optimizer": "adamw", "lr": 1e-3, "momentum": 0.0, "weight_decay": 1e-2},
    "finetune": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
}
FINETUNE = "configs/matrix/lenet300-finetune.toml"  # the "finetune" recipe's dense networks (5 epochs)


def dense_state(seed: int) -> str:
    """The file of the dense network the matrix's fine-tuned setting starts from for ``seed``."""
    from haloprune.experiments.config import load_sweep_config
    from haloprune.experiments.sweep import PRETRAIN, expand

    cfg = load_sweep_config(FINETUNE)
    job = next(j for j in expand(cfg) if j.method == PRETRAIN and j.seed == seed)
    path = cfg.paths.state(job.key)
    if not path.is_file():
        raise SystemExit(f"no dense network for seed {seed} at {path}: run haloprune sweep {FINETUNE} first")
    return str(path)


class CarriedXi(TargetMode):
    """ξ at least the last top-up's cut / lr, so that the proximal step and λ's update act at every step
    (the exact control's ξ is 0 whenever the last top-up left enough zeros)."""

    last_cut = 0.0

    def _exact_xi(
        self, weights: list[torch.Tensor], lam_squared: Callable[[], torch.Tensor], lr: float
    ) -> None:
        super()._exact_xi(weights, lam_squared, lr)
        if lr > 0:
            self.xi = max(self.xi, self.last_cut / lr)

    def _top_up(self, weights: list[torch.Tensor], lam_squared: Callable[[], torch.Tensor]) -> None:
        zeros = sum(t.numel() - int(torch.count_nonzero(t)) for t in weights)
        super()._top_up(weights, lam_squared)
        self.last_cut = self._near["top_up"] if self.wanted > zeros else 0.0


class Frozen(Callback):
    """From ``at`` of the steps on: the masks are frozen from the zeros and HALO is off (ξ = 0, no top-up):
    a recovery phase."""

    def __init__(self, halo: HALO, at: float) -> None:
        self.halo, self.at, self.done = halo, at, False

    def on_step_end(self, state: FitState) -> None:
        if self.done or state.step < self.at * state.epochs * state.steps_per_epoch:
            return
        self.done = True
        restore_masks(state.model)
        target = self.halo.target
        assert target is not None
        target.control_kind = "hard"  # ξ = 0 from now on ...
        target.after_step = lambda *args, **kwargs: None  # type: ignore[method-assign]  # ... and no top-up


def _ranks(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    out[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    return out


class Probe(Callback):
    """Every tenth of the run, a JSON line: the live weights' λ percentiles, the Spearman correlation of
    ``|w|·λ²`` with ``|w|`` over them, and the overlap of the weights each would keep at the target."""

    def __init__(self, halo: HALO, target: float) -> None:
        self.halo, self.target = halo, target

    def on_step_end(self, state: FitState) -> None:
        total = state.epochs * state.steps_per_epoch
        if state.step % max(1, total // 10):
            return
        halo = self.halo
        w = torch.cat([t.detach().abs().flatten() for t in halo.weights()]).double()
        lam = halo.lam.detach().double().clamp(halo.lambda_min, halo.lambda_max)
        score, live = w * lam.square(), w > 0
        keep = max(1, round((1 - self.target) * len(w)))
        kept = set(score.topk(keep).indices.tolist()) & set(w.topk(keep).indices.tolist())
        pair = torch.stack([_ranks(w[live]), _ranks(score[live])])
        row = {
            "share_of_steps": round(state.step / total, 2),
            "live": round(float(live.double().mean()), 4),
            "live_lambda_q10_q50_q90": [round(q, 4) for q in lam[live].quantile(_Q).tolist()],
            "spearman_score_vs_magnitude": round(float(torch.corrcoef(pair)[0, 1]), 4),
            "kept_overlap": round(len(kept) / keep, 4),
        }
        print(json.dumps(row), flush=True)


_Q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("optimizer", choices=list(RECIPES))
    ap.add_argument("target", type=float)
    ap.add_argument("seed", type=int)
    ap.add_argument("variant", choices=["exact", "hard", "carry", "freeze"])
    ap.add_argument("--ramp-end", type=float, default=0.75)
    ap.add_argument("--freeze-at", type=float, default=0.75, help="freeze: the share of the steps")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--probe", action="store_true", help="λ against |w| every tenth of the run")
    ap.add_argument("--lambda-init", choices=["one", "equilibrium"], default="one")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_data(DataConfig(name="fashion-mnist", val_size=5000), args.seed)
    torch.manual_seed(args.seed)
    model = build_model("lenet-300-100")
    epochs = args.epochs
    if args.optimizer == "finetune":
        init_from(model, dense_state(args.seed))
        epochs = 5
    optim = OptimConfig(epochs=epochs, batch_size=100, schedule="cosine", **RECIPES[args.optimizer])
    control = "hard" if args.variant == "hard" else "exact"
    halo = HALO(model, target_sparsity=args.target, ramp_end=args.ramp_end, target_control=control)
    assert halo.target is not None
    if args.lambda_init == "equilibrium":
        with torch.no_grad():
            w = torch.cat([t.detach().abs().flatten() for t in halo.weights()])
            halo.lam.copy_((w / w.mean()).pow(1 / 3).clamp(halo.lambda_min, halo.lambda_max))
    if args.variant == "carry":
        halo.target.__class__ = CarriedXi
    callbacks: list[Callback] = [Frozen(halo, args.freeze_at)] if args.variant == "freeze" else []
    if args.probe:
        callbacks.append(Probe(halo, args.target))
    start = time.perf_counter()
    fit(model, data, optim, penalty=halo, seed=args.seed, progress=False, callbacks=callbacks)
    w = torch.cat([t.detach().abs().flatten() for t in halo.weights()])
    live = halo.lam.detach()[w > 0]
    quantiles = live.double().quantile(_Q).tolist()
    global_magnitude_prune(model, args.target)
    row = {
        **vars(args),
        "accuracy": evaluate(model, data.x_test, data.y_test)["accuracy"],
        "val_accuracy": evaluate(model, data.x_val, data.y_val)["accuracy"],
        "trained_sparsity": round(1 - int(torch.count_nonzero(w)) / w.numel(), 5),
        "live_lambda_q10_q50_q90": [round(q, 4) for q in quantiles],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
