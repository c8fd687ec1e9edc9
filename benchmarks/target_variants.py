"""Target mode's exact control and the variants measured against it in docs/results/matrix.md ("the
causes"): one LeNet-300-100 (or LeNet-5) run on real Fashion-MNIST (20 epochs, the matrix's SGD or AdamW
recipe), pruned once to the target, one JSON line with test / validation accuracy, the zeros training left
and the λ of the weights still alive (10th / 50th / 90th percentile).

    python benchmarks/target_variants.py adamw 0.98 0 exact      # the default (the matrix's HALO run)
    python benchmarks/target_variants.py adamw 0.98 0 hard       # ξ = 0 (target_control="hard"): no shrinkage
    python benchmarks/target_variants.py adamw 0.98 0 carry      # ξ carried from the last top-up's cut
    python benchmarks/target_variants.py adamw 0.95 0 freeze     # masks frozen, HALO off: last 25% of steps
    python benchmarks/target_variants.py adamw 0.9 0 exact --ramp-end 0.5
    python benchmarks/target_variants.py sgd 0.98 0 exact --epochs 10 --probe   # λ against |w|, per tenth
    python benchmarks/target_variants.py finetune 0.98 0 exact --lambda-init equilibrium

    python benchmarks/target_variants.py adamw 0.9 0 gmp --model lenet-5 --trace   # GMP, the matrix's run
    python benchmarks/target_variants.py adamw 0.9 0 hard --model lenet-5 --ramp-steps 0.1 0.75
    python benchmarks/target_variants.py adamw 0.9 0 exact --model lenet-5 --ramp-budget 0.2 0.75
    python benchmarks/target_variants.py adamw 0.9 0 exact --model lenet-5 --adam-geometry 1   # finding 13

``--model lenet-5``: the matrix's LeNet-5 settings (configs/matrix/lenet5-*.toml, the same recipes). ``gmp``:
GMP as the matrix runs it (10%–75% of the steps, masks every 100 steps). ``--ramp-steps S E``: target mode's
ramp from S to E of the *steps* (GMP's timing) instead of 0 to ``ramp_end`` of the step budget;
``--ramp-budget S E``: in budget units, from S. ``--max-shrink``: HALO's option. ``--hold-zeros``: zero
weights stay zero through a step (no Adam revival). ``--trace``: every tenth of the steps the density per
layer, the mask's churn, ξ's share of steps and the L1 pull on the kept weights; per-layer sparsity and the
last epoch's train CE at the end (exp30's probes, notes30.md). benchmarks/sweep_variant.py runs any matrix job
(e.g. the GPT) with the same variants.

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
from haloprune.build import init_from, load_data, seed_everything
from haloprune.config import DataConfig, OptimConfig
from haloprune.core.params import select_parameters
from haloprune.core.schedules import cubic_sparsity
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


class Gradual(Callback):
    """GMP as the matrix runs it (haloprune.methods.magnitude.GradualMagnitude, defaults): global
    magnitude masks on Zhu & Gupta's cubic ramp from ``start`` to ``end`` of the steps, updated every
    ``every`` steps."""

    def __init__(self, model: torch.nn.Module, target: float, total: int, start=0.1, end=0.75, every=100):
        self.model, self.target, self.every = model, target, every
        self.t0 = round(start * total)
        self.t1 = max(self.t0 + 1, round(end * total))

    def on_step_end(self, state: FitState) -> None:
        step, t0, t1 = state.step, self.t0, self.t1
        if t0 <= step <= t1 and ((step - t0) % self.every == 0 or step == t1):
            global_magnitude_prune(self.model, cubic_sparsity(step, self.target, t0, t1))


def ramp_in_steps(halo: HALO, total: int, start: float, end: float) -> None:
    """Target mode's ramp measured in optimizer steps (GMP's: ``start`` to ``end`` of the steps) instead of
    fractions of the step budget (0 to ramp_end of Σ lr)."""
    ctrl = halo.target.controller
    ctrl.target_density = lambda progress: (
        1.0
        - cubic_sparsity(  # type: ignore[method-assign]
            ctrl.steps / total, ctrl.sparsity, start, end
        )
    )


def hold_zeros(halo: HALO) -> None:
    """Weights that are zero before a step stay zero through it (no Adam revival; the top-up then only
    zeroes live weights): the mask changes only by pruning, as GMP's."""
    target = halo.target
    control, after = target.control, target.after_step
    held: dict[str, list[torch.Tensor]] = {}

    def held_control(ws, lam_squared, step_size, lr):  # type: ignore[no-untyped-def]
        held["zero"] = [t.detach() == 0 for t in ws]
        return control(ws, lam_squared, step_size, lr)

    @torch.no_grad()
    def held_after(ws, lam_squared):  # type: ignore[no-untyped-def]
        for t, z in zip(ws, held["zero"], strict=True):
            t.masked_fill_(z, 0.0)
        after(ws, lam_squared)

    target.control, target.after_step = held_control, held_after  # type: ignore[method-assign]


def lam_signal(halo: HALO, psi_scale: float) -> dict:
    """Prototype "lam-signal" (decoupled Adam/AdamW only): λ's update gets a per-weight signal at every step.
    The fused step runs unchanged (the weights' shrinkage uses the exact control's ξ, 0 in most steps);
    then, before the top-up (so the top-up ranks by this λ), λ's result is overwritten, eagerly, by the
    same decoupled update from the same pre-step values,
    ``λ ← clamp(λ_old − lr_λ·(−2·ξ_λ·|w_old|/λ_old³ + psi_scale·ψ + wd_λ·λ_old), λ_min, λ_max)``, with
    ``ξ_λ`` = this step's ξ if > 0, else the ξ the last nonzero cut implied (carried: the last ξ > 0, or
    the last top-up's cut / that step's lr, whichever came last; 0 until the first cut). ``w_old``,
    ``λ_old``: the weights and λ before the step (as the fused update reads them). Returns a dict that
    holds the carried ξ_λ (``"xi_lam"``) for the trace."""
    target = halo.target
    control, after = target.control, target.after_step
    st: dict = {"xi_lam": 0.0, "carried": 0.0}

    def sig_control(ws, lam_squared, step_size, lr):  # type: ignore[no-untyped-def]
        out = control(ws, lam_squared, step_size, lr)
        st["lr"] = lr
        st["w_old"] = torch.cat([t.detach().abs().flatten() for t in ws])
        st["lam_old"] = halo.lam.detach().clamp(halo.lambda_min, halo.lambda_max).clone()
        if target.xi > 0:
            st["carried"] = target.xi
        st["xi_lam"] = st["carried"]
        return out

    @torch.no_grad()
    def sig_after(ws, lam_squared):  # type: ignore[no-untyped-def]
        update = halo.update
        lr_l, wd_l = update.lam_hyper(update.plan.groups[0])
        lam, w, xi = st["lam_old"], st["w_old"].to(st["lam_old"].dtype), st["xi_lam"]
        g = -2.0 * xi * w / lam**3 + psi_scale * halo.psi + wd_l * lam
        new = (lam - lr_l * g).clamp(halo.lambda_min, halo.lambda_max)
        # against the fused λ (a check: round-off when ξ_λ = ξ and PSI_SCALE = 1)
        st["fused_gap"] = float((halo.lam.detach() - new).abs().max())
        halo.lam.copy_(new)  # before the top-up ranks
        n = sum(t.numel() for t in ws)
        zeros = n - sum(int(torch.count_nonzero(t)) for t in ws)
        after(ws, lam_squared)
        if target.wanted > zeros and st["lr"] > 0:  # the top-up cut this step: carry its ξ to later steps
            st["carried"] = target._near["top_up"] / st["lr"]

    target.control, target.after_step = sig_control, sig_after  # type: ignore[method-assign]
    return st


def adam_geometry(
    halo: HALO, power: float, optimizer: torch.optim.Optimizer | None = None, per_tensor: bool = False
) -> None:
    """Prototype "adam-geometry" (decoupled Adam/AdamW): HALO's pull in Adam's geometry. Weight ``i`` is
    soft-thresholded by ``lr·ξ/(λ_i²·d_i)`` instead of ``lr·ξ/λ_i²``, with ``d_i = (sqrt(v̂_i) + eps)^power``
    (v̂: Adam's bias-corrected second moment before the step) scaled to mean 1 over the live weights, so
    weights whose gradients are small are pulled harder; the exact control and the top-up rank by
    ``|w|·λ²·d`` (power 1, uniform λ: ``|w|·sqrt(v̂)``, the ranking of OBD's saliency ``w²·F_ii`` with Adam's
    v̂ as the diagonal Fisher). The fused step runs with ξ = 0; the shrinkage and λ's ``−2ξ|w|/λ³`` term
    are applied here, eagerly, from the pre-step weights and λ (the cuts are forced onto the eager path).
    ``optimizer``: the one HALO is attached to, if it already is (else taken when it attaches);
    ``per_tensor``: ``d`` scaled to mean 1 over each tensor's live weights instead (the ranking within a
    tensor changes, the pull's share between tensors does not)."""
    import haloprune.penalties.halo.target as target_module

    target = halo.target
    control, after, strengths = target.control, target.after_step, target.strengths
    target_module.COMPILED_FROM = 1 << 62  # (the compiled cuts score by λ² alone)
    st: dict = {"opt": optimizer}
    attach = halo.attach

    def attach_and_keep(optimizer, **kw):  # type: ignore[no-untyped-def]
        st["opt"] = optimizer
        return attach(optimizer, **kw)

    halo.attach = attach_and_keep  # type: ignore[method-assign]
    target.strengths = lambda: (0.0, strengths()[1])  # type: ignore[method-assign]  # the kernel's ξ: 0

    def mean_one(d: torch.Tensor, ws: list[torch.Tensor]) -> torch.Tensor:
        """``d`` scaled to mean 1 over the live (nonzero) weights of ``ws`` (over all, if none is)."""
        live = torch.cat([t.detach().flatten() != 0 for t in ws])
        return d / (d[live].mean() if live.any() else d.mean())

    def scale(ws: list[torch.Tensor]) -> torch.Tensor:
        opt = st["opt"]
        beta2, eps = opt.param_groups[0]["betas"][1], opt.param_groups[0]["eps"]
        parts = []
        for p, w in zip(halo.penalised_parameters(), ws, strict=True):
            state = opt.state.get(p)
            if not state or float(state["step"]) == 0:
                parts.append(torch.ones(w.numel(), dtype=torch.float64))
                continue
            v = state["exp_avg_sq"].double().flatten() / (1 - beta2 ** float(state["step"]))
            part = (v.sqrt() + eps) ** power
            parts.append(mean_one(part, [w]) if per_tensor else part)
        d = torch.cat(parts)
        return d if per_tensor else mean_one(d, ws)

    def g_control(ws, lam_squared, step_size, lr, lams=None):  # type: ignore[no-untyped-def]
        st["d"], st["lr"] = scale(ws), lr
        st["lam2"] = lam_squared().double()
        st["w_old"] = torch.cat([t.detach().abs().flatten() for t in ws]).double()
        return control(ws, lambda: (st["lam2"] * st["d"]).to(halo.lam.dtype), step_size, lr, None)

    @torch.no_grad()
    def g_after(ws, lam_squared, lams=None):  # type: ignore[no-untyped-def]
        xi, lr = target.xi, st["lr"]
        if xi > 0 and lr > 0:
            thr = lr * xi / (st["lam2"] * st["d"])
            at = 0
            for t in ws:
                th = thr[at : at + t.numel()].view_as(t).to(t.dtype)
                at += t.numel()
                t.copy_(torch.sign(t) * (t.abs() - th).clamp_min(0.0))
            lr_l, _ = halo.update.lam_hyper(halo.update.plan.groups[0])
            lam_old = st["lam2"].sqrt()
            bump = (lr_l * 2.0 * xi * st["w_old"] / lam_old**3).to(halo.lam.dtype)
            halo.lam.add_(bump).clamp_(halo.lambda_min, halo.lambda_max)
        after(ws, lambda: (lam_squared().double() * scale(ws)).to(halo.lam.dtype), None)

    target.control, target.after_step = g_control, g_after  # type: ignore[method-assign]


def ramp_in_budget(halo: HALO, start: float, end: float) -> None:
    """Target mode's ramp in its own unit (fractions of the step budget Σ lr), from ``start`` instead of 0."""
    ctrl = halo.target.controller
    ctrl.target_density = lambda progress: (
        1.0
        - cubic_sparsity(  # type: ignore[method-assign]
            progress, ctrl.sparsity, start, end
        )
    )


class Trace(Callback):
    """Probes: every tenth of the steps a JSON line with the density overall and per layer, the train CE
    of the epoch so far; in target mode also the churn (weights revived by a step, weights zeroed by the
    proximal step; weights regrown and pruned over the step and top-up, i.e. the mask's real changes),
    the share of steps with ξ > 0, the summed shrink threshold of a weight at λ's floor (Σ lr·ξ/λ_min²)
    and the summed threshold the median live weight gets at its own λ (Σ lr·ξ/λ², the L1 pull), each over
    the last tenth, and the live weights' |w| percentiles."""

    def __init__(self, model: torch.nn.Module, halo: HALO | None) -> None:
        self.model, self.halo, self.sig = model, halo, None
        self.names = select_parameters(model)
        self.acc = {
            "revived": 0,
            "prox_zeroed": 0,
            "regrown": 0,
            "pruned": 0,
            "xi_pos": 0,
            "steps": 0,
            "pull": 0.0,
            "pull_median_live": 0.0,
        }
        self.rows: list[dict] = []
        target = halo.target if halo is not None else None
        if target is None:
            return
        control, after = target.control, target.after_step
        flat = lambda ws: torch.cat([t.detach().flatten() for t in ws])  # noqa: E731

        def traced_control(ws, lam_squared, step_size, lr):  # type: ignore[no-untyped-def]
            self.before = flat(ws) == 0
            out = control(ws, lam_squared, step_size, lr)
            self.acc["steps"] += 1
            if target.xi > 0:
                self.acc["xi_pos"] += 1
                self.acc["pull"] += lr * target.xi / halo.lambda_min**2
                live = ~self.before
                if live.any():  # the threshold the median live weight actually gets: lr·ξ/λ²
                    self.acc["pull_median_live"] += float((lr * target.xi / lam_squared()[live]).median())
            return out

        def traced_after(ws, lam_squared):  # type: ignore[no-untyped-def]
            w = flat(ws)
            zero = w == 0
            self.acc["revived"] += int((self.before & ~zero).sum())
            self.acc["prox_zeroed"] += int((~self.before & zero).sum())
            after(ws, lam_squared)
            zero = flat(ws) == 0  # the mask after the top-up: what changed over the whole step
            self.acc["regrown"] += int((self.before & ~zero).sum())
            self.acc["pruned"] += int((~self.before & zero).sum())

        target.control, target.after_step = traced_control, traced_after  # type: ignore[method-assign]

    def on_step_end(self, state: FitState) -> None:
        total = state.epochs * state.steps_per_epoch
        if state.step % max(1, total // 10):
            return
        ps = [self.model.get_parameter(n).detach() for n in self.names]
        nz = [int(torch.count_nonzero(p)) for p in ps]
        n = sum(p.numel() for p in ps)
        ce, _, seen = state.sums.tolist() if state.sums is not None else (0.0, 0.0, 0.0)
        row = {
            "share_of_steps": round(state.step / total, 2),
            "lr": round(state.optimizer.param_groups[0]["lr"], 6),
            "density": round(sum(nz) / n, 4),
            "layer_density": {
                k.split(".")[0]: round(c / p.numel(), 4) for k, c, p in zip(self.names, nz, ps, strict=True)
            },
            "train_ce_epoch_so_far": round(ce / max(seen, 1), 4),
        }
        if self.acc["steps"]:
            row.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.acc.items()})
            live = torch.cat([p.abs().flatten() for p in ps])
            live = live[live > 0]
            row["live_abs_w_q10_q50_q90"] = [round(q, 4) for q in live.double().quantile(_Q).tolist()]
            if self.halo is not None:
                lam = self.halo.lam.detach().double().clamp(self.halo.lambda_min, self.halo.lambda_max)
                wf = torch.cat([p.flatten() for p in self.halo.weights()])
                row["live_lambda_q10_q50_q90"] = [round(q, 5) for q in lam[wf != 0].quantile(_Q).tolist()]
                row["xi"] = float(f"{self.halo.target.xi:.3g}")
                if self.sig is not None:
                    row["xi_lam"] = float(f"{self.sig['xi_lam']:.3g}")
            self.acc = dict.fromkeys(self.acc, 0) | {"pull": 0.0, "pull_median_live": 0.0}
        self.rows.append(row)
        print(json.dumps(row), flush=True)


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
    ap.add_argument("variant", choices=["exact", "hard", "carry", "freeze", "gmp"])
    ap.add_argument("--model", choices=["lenet-300-100", "lenet-5"], default="lenet-300-100")
    ap.add_argument(
        "--ramp-steps",
        type=float,
        nargs=2,
        metavar=("START", "END"),
        default=None,
        help="target mode's ramp from START to END of the *steps* (GMP's: 0.1 0.75)",
    )
    ap.add_argument(
        "--ramp-budget",
        type=float,
        nargs=2,
        metavar=("START", "END"),
        default=None,
        help="target mode's ramp from START to END of the step budget (default 0 ramp_end)",
    )
    ap.add_argument("--max-shrink", type=float, default=None)
    ap.add_argument("--hold-zeros", action="store_true", help="zero weights stay zero through a step")
    ap.add_argument(
        "--lam-signal",
        type=float,
        default=None,
        metavar="PSI_SCALE",
        help="prototype: λ updated every step with the carried ξ and ψ·PSI_SCALE (see lam_signal)",
    )
    ap.add_argument(
        "--adam-geometry",
        type=float,
        default=None,
        metavar="POWER",
        help="prototype: the pull and the ranking scaled by (sqrt(v̂) + eps)^POWER (see adam_geometry)",
    )
    ap.add_argument("--per-tensor", action="store_true", help="--adam-geometry scaled per tensor")
    ap.add_argument("--trace", action="store_true", help="density per layer, churn, ξ, every tenth")
    ap.add_argument("--ramp-end", type=float, default=0.75)
    ap.add_argument("--freeze-at", type=float, default=0.75, help="freeze: the share of the steps")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--probe", action="store_true", help="λ against |w| every tenth of the run")
    ap.add_argument("--lambda-init", choices=["one", "equilibrium"], default="one")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_data(DataConfig(name="fashion-mnist", val_size=5000), args.seed)
    seed_everything(args.seed)
    model = build_model(args.model)
    epochs = args.epochs
    if args.optimizer == "finetune":
        init_from(model, dense_state(args.seed))
        epochs = 5
    optim = OptimConfig(epochs=epochs, batch_size=100, schedule="cosine", **RECIPES[args.optimizer])
    total = optim.steps_per_epoch(len(data.y_train)) * epochs
    if args.variant == "gmp":
        callbacks: list[Callback] = [Gradual(model, args.target, total)]
        if args.trace:
            callbacks.append(Trace(model, None))
        start = time.perf_counter()
        history = fit(model, data, optim, seed=args.seed, progress=False, callbacks=callbacks)
        global_magnitude_prune(model, args.target)
        finish(args, model, data, history, start, callbacks)
        return
    control = "hard" if args.variant == "hard" else "exact"
    halo = HALO(
        model,
        target_sparsity=args.target,
        ramp_end=args.ramp_end,
        target_control=control,
        max_shrink=args.max_shrink,
    )
    assert halo.target is not None
    if args.ramp_steps is not None:
        ramp_in_steps(halo, total, *args.ramp_steps)
    if args.ramp_budget is not None:
        ramp_in_budget(halo, *args.ramp_budget)
    if args.hold_zeros:
        hold_zeros(halo)
    if args.lambda_init == "equilibrium":
        with torch.no_grad():
            w = torch.cat([t.detach().abs().flatten() for t in halo.weights()])
            halo.lam.copy_((w / w.mean()).pow(1 / 3).clamp(halo.lambda_min, halo.lambda_max))
    if args.variant == "carry":
        halo.target.__class__ = CarriedXi
    if args.adam_geometry is not None:
        adam_geometry(halo, args.adam_geometry, per_tensor=args.per_tensor)
    sig = lam_signal(halo, args.lam_signal) if args.lam_signal is not None else None
    callbacks = [Frozen(halo, args.freeze_at)] if args.variant == "freeze" else []
    if args.trace:
        callbacks.append(Trace(model, halo))
        callbacks[-1].sig = sig
    if args.probe:
        callbacks.append(Probe(halo, args.target))
    start = time.perf_counter()
    history = fit(model, data, optim, penalty=halo, seed=args.seed, progress=False, callbacks=callbacks)
    w = torch.cat([t.detach().abs().flatten() for t in halo.weights()])
    live = halo.lam.detach()[w > 0]
    quantiles = live.double().quantile(_Q).tolist()
    global_magnitude_prune(model, args.target)
    finish(args, model, data, history, start, callbacks, w, quantiles)


def finish(args, model, data, history, start, callbacks, w=None, quantiles=None) -> None:  # type: ignore[no-untyped-def]
    """The run's JSON line (with --trace: the per-layer sparsity at the end and the last epoch's train CE)."""
    row = {
        **vars(args),
        "accuracy": evaluate(model, data.x_test, data.y_test)["accuracy"],
        "val_accuracy": evaluate(model, data.x_val, data.y_val)["accuracy"],
    }
    if w is not None:
        row["trained_sparsity"] = round(1 - int(torch.count_nonzero(w)) / w.numel(), 5)
        row["live_lambda_q10_q50_q90"] = [round(q, 4) for q in quantiles]
    if args.trace:
        names = select_parameters(model)
        row["layer_sparsity"] = {
            n.split(".")[0]: round(
                1 - int(torch.count_nonzero(model.get_parameter(n))) / model.get_parameter(n).numel(), 4
            )
            for n in names
        }
        row["last_epoch_train_ce"] = round(history[-1]["train_ce"], 4)
        row["last_epoch_train_acc"] = round(history[-1]["train_accuracy"], 2)
    row["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
