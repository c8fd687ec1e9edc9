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
        cells = [f"**{_pct(v)}**" if v is not None and v == best and len(finite) > 1 else _pct(v) for v in vals]
        lines.append(f"| {100 * s:g}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_markdown(records: Sequence[dict[str, Any]], summary: dict[str, Any], cfg: Any) -> str:
    """The main job's report: test accuracy table, the selection on the validation split, timings."""
    by_method = {r["method"]: r for r in records}
    lines = [
        f"# {cfg.model.name} on {cfg.data.name}: dense vs HALO, one-shot global magnitude pruning",
        "",
        f"Same data, seed ({cfg.seed}) and budget ({cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}, "
        f"lr {cfg.optim.lr:g} {cfg.optim.schedule}, momentum {cfg.optim.momentum:g}, "
        f"weight decay {cfg.optim.weight_decay:g}). Each trained network is pruned once at every sparsity "
        "and evaluated on the test set **without fine-tuning**.",
        "",
        "## Test accuracy (%) after pruning",
        "",
        sparsity_table(records),
        "",
        "Unpruned test accuracy: "
        + ", ".join(f"{m} {_pct(r['unpruned_test_accuracy'])}%" for m, r in by_method.items()),
        "",
        "## HALO hyperparameters, chosen on the validation split",
        "",
        "| xi | psi | mean val accuracy after pruning at "
        + ", ".join(f"{100 * s:g}%" for s in cfg.select_sparsities)
        + " |",
        "|---:|---:|---:|",
    ]
    for row in summary["selection"]:
        mark = " (chosen)" if (row["xi"], row["psi"]) == (summary["chosen"]["xi"], summary["chosen"]["psi"]) else ""
        lines.append(f"| {row['xi']:g} | {row['psi']:g} | {_pct(row['score'])}{mark} |")
    lines += [
        "",
        "## Cost",
        "",
        "| method | seconds / epoch |",
        "|---|---:|",
        *(f"| {m} | {r['seconds_per_epoch']:.2f} |" for m, r in by_method.items()),
        "",
        f"Wall time of the whole job: {summary['wall_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
