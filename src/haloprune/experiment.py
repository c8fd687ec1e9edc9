"""Prune-and-evaluate, and the main job: dense vs HALO on the same data, seed and budget.

The comparison trains a dense network (weight decay only) and HALO networks over a declared (ξ, ψ)
grid. HALO's (ξ, ψ) is chosen on the validation split — by mean validation accuracy after one-shot
global magnitude pruning at ``select_sparsities`` — never on the test set. Both final networks are then
pruned once at every requested sparsity and evaluated without fine-tuning.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import save_json, save_text
from .config import CompareConfig, PenaltyConfig, TrainConfig, to_toml
from .data import SplitData
from .pruning import global_magnitude_prune, layerwise_magnitude_prune, sparsity_report
from .train import TrainResult, evaluate, train


def prune_and_evaluate(
    model: nn.Module,
    data: SplitData,
    sparsities: Sequence[float],
    *,
    per_layer: bool = False,
    batch_size: int = 1000,
    splits: Sequence[str] = ("val", "test"),
) -> list[dict[str, Any]]:
    """For each sparsity: prune a copy of ``model`` once by magnitude, evaluate it, no fine-tuning."""
    prune = layerwise_magnitude_prune if per_layer else global_magnitude_prune
    rows = []
    for s in sparsities:
        pruned = copy.deepcopy(model)
        prune(pruned, s)
        total = sparsity_report(pruned)[-1]
        row: dict[str, Any] = {"sparsity": s, "achieved_sparsity": total.sparsity, "nonzero": total.nonzero}
        for split in splits:
            x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
            if len(y):
                row[f"{split}_accuracy"] = evaluate(pruned, x, y, batch_size)["accuracy"]
        row["accuracy"] = row.get("test_accuracy", float("nan"))
        rows.append(row)
    return rows


def _halo_cfg(cfg: CompareConfig, xi: float, psi: float) -> TrainConfig:
    pen = cfg.penalty.model_copy(update={"xi": xi, "psi": psi})
    return _train_cfg(cfg, f"halo_xi{xi:g}_psi{psi:g}", pen)


def _train_cfg(cfg: CompareConfig, name: str, penalty: PenaltyConfig) -> TrainConfig:
    base = cfg.model_dump(include=set(TrainConfig.model_fields))
    base.update(name=name, out_dir=str(cfg.run_dir), penalty=penalty.model_dump())
    return TrainConfig.model_validate(base)


def run_comparison(cfg: CompareConfig, *, progress: bool | None = None) -> list[dict[str, Any]]:
    """Run the main comparison; writes ``results.json``, ``report.md`` and the plot into ``cfg.run_dir``."""
    from .report import comparison_markdown
    from .plots import plot_accuracy_vs_sparsity

    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    save_text(to_toml(cfg), out / "compare_config.toml")
    t0 = time.perf_counter()
    dense = train(_train_cfg(cfg, "dense", PenaltyConfig(name="none")), progress=progress)
    data = dense.data

    candidates: list[tuple[float, TrainResult, dict[str, Any]]] = []
    selection = []
    for point in cfg.grid:
        res = train(_halo_cfg(cfg, point.xi, point.psi), data=data, progress=progress)
        rows = prune_and_evaluate(res.model, data, cfg.select_sparsities, splits=("val",))
        score = sum(r.get("val_accuracy", 0.0) for r in rows) / len(rows)
        selection.append({"xi": point.xi, "psi": point.psi, "run": res.run_dir.name if res.run_dir else None,
                          "val_accuracy_after_pruning": {str(r["sparsity"]): r.get("val_accuracy")
                                                         for r in rows},
                          "score": score})
        candidates.append((score, res, {"xi": point.xi, "psi": point.psi}))
    best_score, best, best_hp = max(candidates, key=lambda c: c[0])

    records: list[dict[str, Any]] = []
    for method, res, hp in (("dense", dense, {}), ("halo", best, best_hp)):
        per_epoch = sum(r["seconds"] for r in res.history) / len(res.history)
        dense_eval = evaluate(res.model, data.x_test, data.y_test, cfg.optim.eval_batch_size)
        base = {"method": method, "model": cfg.model.name, "dataset": cfg.data.name, "seed": cfg.seed,
                "epochs": cfg.optim.epochs, "run": res.run_dir.name if res.run_dir else None,
                "seconds_per_epoch": per_epoch, "unpruned_test_accuracy": dense_eval["accuracy"], **hp}
        for row in prune_and_evaluate(res.model, data, cfg.prune.sparsities, per_layer=cfg.prune.per_layer,
                                      batch_size=cfg.optim.eval_batch_size):
            records.append({**base, **row})
    summary = {"selection": selection, "chosen": best_hp, "chosen_score": best_score,
               "wall_seconds": time.perf_counter() - t0}
    save_json(records, out / "results.json")
    save_json(summary, out / "selection.json")
    plot_accuracy_vs_sparsity(records, out / "accuracy_vs_sparsity.png",
                              title=f"{cfg.model.name} on {cfg.data.name}, one-shot global magnitude pruning, "
                                    f"no fine-tuning")
    save_text(comparison_markdown(records, summary, cfg), out / "report.md")
    return records


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "results.json"
