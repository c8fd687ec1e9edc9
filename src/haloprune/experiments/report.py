"""Result records → markdown tables; and a pruned run's table and figure to an experiment logger."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haloprune.experiments.plots import plot_sweep_accuracy
from haloprune.training.callbacks import ExperimentLogger


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


# ---- sweeps: records of many runs -> per-method tables (mean ± std over seeds) -------------------------


def _hp_key(hp: dict[str, Any]) -> str:
    return json.dumps(hp, sort_keys=True)


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group records by (method, hyperparameters, target sparsity): mean/std over seeds, in the order the
    groups first appear in ``records``."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], _hp_key(r.get("hyperparameters") or {}), r["sparsity"]), []).append(r)
    out = []
    for (method, hp, sparsity), rows in groups.items():
        acc = [r["accuracy"] for r in rows]
        val = [r["val_accuracy"] for r in rows]
        out.append(
            {
                "method": method,
                "hyperparameters": rows[0].get("hyperparameters") or {},
                "hp_key": hp,
                "sparsity": sparsity,
                "seeds": sorted(r["seed"] for r in rows),
                "n": len(rows),
                "accuracy_mean": statistics.fmean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "val_accuracy_mean": statistics.fmean(val),
                "achieved_sparsity_mean": statistics.fmean(r["achieved_sparsity"] for r in rows),
                # left at exactly zero by training itself (target-sparsity methods), before pruning
                "trained_sparsity_mean": _mean_of(rows, "trained_sparsity"),
                "wall_seconds_mean": _mean_of(rows, "wall_seconds"),
                "epochs": max(int(r.get("epochs") or 0) for r in rows),
                "runs": sorted({str(r.get("run_key", "")) for r in rows}),
            }
        )
    return out


def _mean_of(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def choose(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The one selection rule: per (method, target sparsity), the grid point with the best mean validation
    accuracy over seeds (the test set is never looked at).

    - Only grid points with the most finished seeds of their (method, target) compete: a point that has
      finished fewer seeds (a sweep still running) never wins on fewer, luckier seeds.
    - A NaN validation accuracy (a diverged run) ranks below every number.
    - Ties go to the grid point that comes first in ``summary`` (:func:`summarize` keeps the order of the
      records: the config's grid order when the report is given the config's jobs).
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in summary:
        groups.setdefault((row["method"], row["sparsity"]), []).append(row)
    out = []
    for rows in groups.values():
        most = max(r["n"] for r in rows)
        best = None
        for r in rows:
            if r["n"] == most and (best is None or _score(r) > _score(best)):
                best = r
        out.append(best)
    return out


def _score(row: dict[str, Any]) -> float:
    v = row["val_accuracy_mean"]
    return -math.inf if v is None or math.isnan(v) else v


def sweep_table(chosen: Sequence[dict[str, Any]], methods: Sequence[str] | None = None) -> str:
    """Methods x sparsities, test accuracy mean ± std over seeds (just the value when every cell has one
    seed); the best mean of each column in bold."""
    one_seed = all(r["n"] == 1 for r in chosen)
    methods = list(methods or dict.fromkeys(r["method"] for r in chosen))
    sparsities = sorted({r["sparsity"] for r in chosen})
    cell = {(r["method"], r["sparsity"]): r for r in chosen}
    best = {
        s: max((cell[(m, s)]["accuracy_mean"] for m in methods if (m, s) in cell), default=None)
        for s in sparsities
    }
    lines = [
        "| method | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " | epochs |",
        "|---|" + "---:|" * (len(sparsities) + 1),
    ]
    for m in methods:
        cells = []
        for s in sparsities:
            r = cell.get((m, s))
            if r is None:
                cells.append("—")
                continue
            text = f"{r['accuracy_mean']:.2f}" + ("" if one_seed else f" ± {r['accuracy_std']:.2f}")
            cells.append(f"**{text}**" if r["accuracy_mean"] == best[s] else text)
        epochs = max((cell[(m, s)]["epochs"] for s in sparsities if (m, s) in cell), default=0)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {epochs} |")
    return "\n".join(lines)


def paired_differences(records: Sequence[dict[str, Any]], pair: Sequence[str]) -> dict[float, list[float]]:
    """Per target sparsity, ``pair[0] − pair[1]`` in test accuracy, seed by seed (the seeds both have
    finished), each method at its chosen setting (:func:`choose`)."""
    first, second = pair
    chosen = {(r["method"], r["sparsity"]): r["hp_key"] for r in choose(summarize(records))}
    acc = {
        (r["method"], _hp_key(r.get("hyperparameters") or {}), r["sparsity"], r["seed"]): r["accuracy"]
        for r in records
    }
    out: dict[float, list[float]] = {}
    for (method, sparsity), hp in chosen.items():
        if method != first or (second, sparsity) not in chosen:
            continue
        other = chosen[(second, sparsity)]
        diffs = [
            a - acc[key]
            for (m, h, s, seed), a in acc.items()
            if (m, h, s) == (first, hp, sparsity) and (key := (second, other, sparsity, seed)) in acc
        ]
        if diffs:
            out[sparsity] = diffs
    return out


def _signed(x: float) -> str:
    """``+0.24``, ``−0.32`` (a minus sign), ``0.00`` for what rounds to zero."""
    text = f"{x:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text.replace("-", "−")


def differences_table(rows: Sequence[tuple[str, dict[float, list[float]]]], label: str) -> str:
    """Markdown: one row per ``(setting, paired_differences)``, one column per target sparsity; each cell
    the mean difference and its [min, max] over seeds (``label`` names the difference)."""
    sparsities = sorted({s for _, diffs in rows for s in diffs})
    lines = [
        f"| {label} | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " | seeds |",
        "|---|" + "---:|" * len(sparsities) + "---:|",
    ]
    for setting, diffs in rows:
        cells = []
        for s in sparsities:
            d = diffs.get(s)
            text = f"{_signed(statistics.fmean(d))} [{_signed(min(d))}, {_signed(max(d))}]" if d else "—"
            cells.append(text)
        n = max((len(d) for d in diffs.values()), default=0)
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def chosen_table(chosen: Sequence[dict[str, Any]]) -> str:
    """The setting each method ended up with, per sparsity: seeds, achieved sparsity, the sparsity training
    itself reached before pruning (target-sparsity methods) and the mean wall time of a run."""
    lines = [
        "| method | sparsity | chosen setting | val acc. | achieved sparsity | zeros before pruning "
        "| s/run | seeds |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(chosen, key=lambda r: (r["method"], r["sparsity"])):
        hp = ", ".join(f"{k}={v}" for k, v in _flatten(r["hyperparameters"]).items()) or "—"
        trained = r.get("trained_sparsity_mean")
        wall = r.get("wall_seconds_mean")
        lines.append(
            f"| {r['method']} | {100 * r['sparsity']:g}% | {hp} | {r['val_accuracy_mean']:.2f} | "
            f"{100 * r['achieved_sparsity_mean']:.2f}% | "
            f"{'—' if trained is None else f'{100 * trained:.2f}%'} | "
            f"{'—' if wall is None else f'{wall:.0f}'} | {','.join(map(str, r['seeds']))} |"
        )
    return "\n".join(lines)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def log_pruned(logger: ExperimentLogger, records: list[dict[str, Any]], step: int, figure: Path) -> None:
    """A run pruned at several sparsities (``records``: ``method``, ``sparsity``, ``accuracy``,
    ``achieved_sparsity``): their accuracies as metrics at ``step`` (``pruned/accuracy/98`` for 98%), the
    table and the accuracy-vs-sparsity figure, drawn to ``figure`` (a PNG path)."""
    metrics = {}
    for r in records:
        at = f"{100 * r['sparsity']:g}"
        metrics[f"pruned/accuracy/{at}"] = r["accuracy"]
        metrics[f"pruned/achieved_sparsity/{at}"] = 100 * r["achieved_sparsity"]
    logger.log_metrics(metrics, step)
    achieved = [{**r, "achieved": 100 * r["achieved_sparsity"]} for r in records]
    table = (
        f"test accuracy (%)\n\n{sparsity_table(records)}\n\n"
        f"achieved sparsity (%)\n\n{sparsity_table(achieved, key='achieved')}\n"
    )
    logger.log_text("prune_table", table)
    chosen = [{**r, "accuracy_mean": r["accuracy"], "accuracy_std": 0.0, "n": 1} for r in records]
    logger.log_figure("accuracy_vs_sparsity", plot_sweep_accuracy(chosen, figure))
