"""Result records → markdown tables (no I/O here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _pct(x: float | None) -> str:
    return "—" if x is None or x != x else f"{x:.2f}"


def sparsity_table(records: Sequence[dict[str, Any]], key: str = "accuracy") -> str:
    """Markdown table: one row per sparsity, one column per method, best value per row in bold."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    sparsities = sorted({r["sparsity"] for r in records})
    cell = {(r["method"], r["sparsity"]): r.get(key) for r in records}
    lines = ["| sparsity | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for s in sparsities:
        vals = [cell.get((m, s)) for m in methods]
        finite = [v for v in vals if v is not None and v == v]
        best = max(finite) if finite else None
        cells = [
            f"**{_pct(v)}**" if v is not None and v == best and len(finite) > 1 else _pct(v) for v in vals
        ]
        lines.append(f"| {100 * s:g}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_markdown(records: Sequence[dict[str, Any]], summary: dict[str, Any], cfg: Any) -> str:
    """The main job's report: test accuracy table, the selection on the validation split, timings."""
    by_method = {r["method"]: r for r in records}
    o = cfg.optim
    lines = [
        f"# {cfg.model.name} on {cfg.data.name}: one-shot global magnitude pruning, no fine-tuning",
        "",
        f"Every method: same data, seed ({cfg.seed}) and budget ({o.epochs} epochs, batch {o.batch_size}, "
        f"SGD lr {o.lr:g} {o.schedule}, momentum {o.momentum:g}, weight decay {o.weight_decay:g}). "
        "Each trained network is pruned once at every sparsity and evaluated on the test set "
        "**without fine-tuning**. "
        "Hyperparameters were chosen on a validation split carved from the training set.",
        "",
        "## Test accuracy (%) after pruning",
        "",
        sparsity_table(records),
        "",
        "| method | chosen setting | unpruned test acc. | weights with abs < 1e-3 | median s / epoch |",
        "|---|---|---:|---:|---:|",
    ]
    for m, r in by_method.items():
        hp = ", ".join(f"{k}={v:g}" for k, v in r["hyperparameters"].items()) or "—"
        lines.append(
            f"| {m} | {hp} | {_pct(r['unpruned_test_accuracy'])} | "
            f"{100 * r['weights_below_1e-3']:.1f}% | {r['seconds_per_epoch']:.2f} |"
        )
    sel = [row for row in summary["selection"] if row["score"] == row["score"]]
    if sel:
        lines += [
            "",
            "## Selection on the validation split",
            "",
            "Score: mean validation accuracy (%) after pruning at "
            + ", ".join(f"{100 * s:g}%" for s in cfg.select_sparsities)
            + ".",
            "",
            "| method | setting | score |",
            "|---|---|---:|",
        ]
        for row in sel:
            setting = ", ".join(
                f"{k}={v:g}"
                for k, v in row.items()
                if k not in {"method", "run", "score", "chosen", "train_seconds"}
            )
            mark = " **(chosen)**" if row["chosen"] else ""
            lines.append(f"| {row['method']} | {setting}{mark} | {_pct(row['score'])} |")
    lines += [
        "",
        f"Training time of all {len(summary['selection'])} runs: {summary['train_seconds']:.0f} s "
        f"(this invocation: {summary['wall_seconds']:.0f} s; finished runs are reused).",
        "",
    ]
    return "\n".join(lines)
