"""Prune-and-evaluate, and the main job: dense vs HALO on the same data, seed and budget.

The comparison trains a dense network (weight decay only) and HALO networks over a declared (ξ, ψ)
grid. HALO's (ξ, ψ) is chosen on the validation split — by mean validation accuracy after one-shot
global magnitude pruning at ``select_sparsities`` — never on the test set. Both final networks are then
pruned once at every requested sparsity and evaluated without fine-tuning.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from haloprune.config import CompareConfig, MethodConfig, to_toml
from haloprune.core.io import save_json, save_text
from haloprune.data import SplitData
from haloprune.pruning import (
    sparsity_report,
)
from haloprune.training import TrainResult, evaluate, prune_and_evaluate, train


def _select(
    cfg: CompareConfig, method: str, spec: MethodConfig, data: SplitData | None, progress: bool | None
) -> tuple[TrainResult, dict[str, Any], list[dict[str, Any]]]:
    """Train every grid point of one method; keep the best on the validation split."""
    tried: list[tuple[float, TrainResult, dict[str, Any]]] = []
    log = []
    for i, (suffix, penalty) in enumerate(spec.candidates()):
        res = train(cfg.train_config(method + suffix, penalty), data=data, progress=progress)
        data = res.data
        point = spec.grid[i] if spec.grid else {}
        score = float("nan")
        if len(spec.grid) > 1:
            rows = prune_and_evaluate(
                res.model,
                data,
                cfg.select_sparsities,
                splits=("val",),
                batch_size=cfg.optim.eval_batch_size,
                **cfg.prune.selection(),
                recalibrate_bn=cfg.prune.recalibrate_bn,
            )
            score = sum(r["val_accuracy"] for r in rows) / len(rows)
        log.append(
            {
                "method": method,
                **point,
                "run": method + suffix,
                "score": score,
                "train_seconds": sum(r["seconds"] for r in res.history),
            }
        )
        tried.append((score, res, point))
    best = max(tried, key=lambda t: t[0] if t[0] == t[0] else -1.0)
    for row in log:
        row["chosen"] = row["run"] == best[1].run_dir.name if best[1].run_dir else False
    return best[1], best[2], log


def run_comparison(cfg: CompareConfig, *, progress: bool | None = None) -> list[dict[str, Any]]:
    """Run the main comparison; writes ``results.json``, ``report.md`` and the plot into ``cfg.run_dir``.

    Each method with a grid is trained at every grid point; the point with the best mean validation
    accuracy after pruning at ``cfg.select_sparsities`` is kept. The test set is used only for the
    final numbers.
    """
    from haloprune.experiments.plots import plot_accuracy_vs_sparsity
    from haloprune.experiments.report import comparison_markdown

    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    save_text(to_toml(cfg), out / "compare_config.toml")
    t0 = time.perf_counter()
    data: SplitData | None = None
    records: list[dict[str, Any]] = []
    selection: list[dict[str, Any]] = []
    for method, spec in cfg.methods.items():
        res, point, log = _select(cfg, method, spec, data, progress)
        data = res.data
        selection += log
        per_epoch = statistics.median(r["seconds"] for r in res.history)  # robust to compile warm-up
        unpruned = evaluate(res.model, data.x_test, data.y_test, cfg.optim.eval_batch_size)["accuracy"]
        own = sparsity_report(res.model, **cfg.prune.selection())[-1]
        base = {
            "method": method,
            "model": cfg.model.name,
            "dataset": cfg.data.name,
            "seed": cfg.seed,
            "epochs": cfg.optim.epochs,
            "run": res.run_dir.name if res.run_dir else None,
            "hyperparameters": point,
            "seconds_per_epoch": per_epoch,
            "unpruned_test_accuracy": unpruned,
            "weights_below_1e-3": res.history[-1]["frac_weights_below_1e-3"],
            "exact_zeros_before_pruning": own.sparsity,
        }
        for row in prune_and_evaluate(
            res.model,
            data,
            cfg.prune.sparsities,
            per_layer=cfg.prune.per_layer,
            batch_size=cfg.optim.eval_batch_size,
            **cfg.prune.selection(),
            recalibrate_bn=cfg.prune.recalibrate_bn,
        ):
            records.append({**base, **row})
    summary = {
        "selection": selection,
        "wall_seconds": time.perf_counter() - t0,
        "train_seconds": sum(row["train_seconds"] for row in selection),
    }
    save_json(records, out / "results.json")
    save_json(summary, out / "selection.json")
    plot_accuracy_vs_sparsity(
        records,
        out / "accuracy_vs_sparsity.png",
        title=f"{cfg.model.name} on {cfg.data.name}: one-shot global magnitude pruning, no fine-tuning",
    )
    save_text(comparison_markdown(records, summary, cfg), out / "report.md")
    return records
