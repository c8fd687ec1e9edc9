"""Result records → markdown tables; and a pruned run's table and figure to an experiment logger."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Metric:
    """What a sweep's tables report and its selection rule ranks: the records' test value ``key`` and
    validation value ``val_<key>``, whether ``higher`` is better, its ``name`` in headings, its ``unit``,
    ``short`` (its validation column's header) and the ``decimals`` its cells show."""

    key: str
    name: str
    unit: str
    short: str
    higher: bool = True
    decimals: int = 2

    @property
    def val_key(self) -> str:
        return f"val_{self.key}"

    @property
    def heading(self) -> str:
        """Its name, with "lower is better" where it is."""
        return self.name if self.higher else f"{self.name} (lower is better)"


ACCURACY = Metric("accuracy", "test accuracy (%)", "%", "val acc.")
# a byte-level language model's records (haloprune.training.evaluate.pruned_record on a text corpus)
BITS_PER_BYTE = Metric(
    "bits_per_byte", "test bits per byte", "bits per byte", "val bits/byte", higher=False, decimals=3
)
METRICS = (ACCURACY, BITS_PER_BYTE)


def metric_of(records: Sequence[dict[str, Any]]) -> Metric:
    """What a sweep's records are compared on: bits per byte when every record has it (a text corpus),
    else accuracy."""
    if records and all(BITS_PER_BYTE.key in r for r in records):
        return BITS_PER_BYTE
    return ACCURACY


def _hp_key(hp: dict[str, Any]) -> str:
    return json.dumps(hp, sort_keys=True)


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group records by (method, hyperparameters, target sparsity): mean/std over seeds, in the order the
    groups first appear in ``records``. Per metric of :data:`METRICS` the records have (accuracy always):
    ``<key>_mean``, ``<key>_std`` and ``val_<key>_mean``."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["method"], _hp_key(r.get("hyperparameters") or {}), r["sparsity"]), []).append(r)
    out = []
    for (method, hp, sparsity), rows in groups.items():
        out.append(
            {
                "method": method,
                "hyperparameters": rows[0].get("hyperparameters") or {},
                "hp_key": hp,
                "sparsity": sparsity,
                "seeds": sorted(r["seed"] for r in rows),
                "n": len(rows),
                **_stats(rows, ACCURACY),
                "achieved_sparsity_mean": statistics.fmean(r["achieved_sparsity"] for r in rows),
                # left at exactly zero by training itself (target-sparsity methods), before pruning
                "trained_sparsity_mean": _mean_of(rows, "trained_sparsity"),
                "wall_seconds_mean": _mean_of(rows, "wall_seconds"),
                "epochs": max(int(r.get("epochs") or 0) for r in rows),
                "runs": sorted({str(r.get("run_key", "")) for r in rows}),
                **{
                    k: v
                    for m in METRICS[1:]
                    if all(m.key in r for r in rows)
                    for k, v in _stats(rows, m).items()
                },
            }
        )
    return out


def _stats(rows: Sequence[dict[str, Any]], metric: Metric) -> dict[str, float]:
    values = [r[metric.key] for r in rows]
    return {
        f"{metric.key}_mean": statistics.fmean(values),
        f"{metric.key}_std": statistics.stdev(values) if len(values) > 1 else 0.0,
        f"{metric.val_key}_mean": statistics.fmean(r[metric.val_key] for r in rows),
    }


def _mean_of(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def choose(summary: Sequence[dict[str, Any]], metric: Metric = ACCURACY) -> list[dict[str, Any]]:
    """The one selection rule: per (method, target sparsity), the grid point with the best mean validation
    ``metric`` over seeds (accuracy: the highest; bits per byte: the lowest; the test set is never looked
    at).

    - Only grid points with the most finished seeds of their (method, target) compete: a point that has
      finished fewer seeds (a sweep still running) never wins on fewer, luckier seeds.
    - A NaN validation value (a diverged run) ranks below every number.
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
            if r["n"] == most and (best is None or _score(r, metric) > _score(best, metric)):
                best = r
        out.append(best)
    return out


def _score(row: dict[str, Any], metric: Metric) -> float:
    v = row[f"{metric.val_key}_mean"]
    if v is None or math.isnan(v):
        return -math.inf
    return v if metric.higher else -v


def sweep_table(
    chosen: Sequence[dict[str, Any]], methods: Sequence[str] | None = None, metric: Metric = ACCURACY
) -> str:
    """Methods x sparsities, the test ``metric`` mean ± std over seeds (just the value when every cell has
    one seed); the best mean of each column in bold."""
    one_seed = all(r["n"] == 1 for r in chosen)
    methods = list(methods or dict.fromkeys(r["method"] for r in chosen))
    sparsities = sorted({r["sparsity"] for r in chosen})
    cell = {(r["method"], r["sparsity"]): r for r in chosen}
    mean, std, best_of = f"{metric.key}_mean", f"{metric.key}_std", max if metric.higher else min
    best = {
        s: best_of((cell[(m, s)][mean] for m in methods if (m, s) in cell), default=None) for s in sparsities
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
            d = metric.decimals
            text = f"{r[mean]:.{d}f}" + ("" if one_seed else f" ± {r[std]:.{d}f}")
            cells.append(f"**{text}**" if r[mean] == best[s] else text)
        epochs = max((cell[(m, s)]["epochs"] for s in sparsities if (m, s) in cell), default=0)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {epochs} |")
    return "\n".join(lines)


def paired_differences(
    records: Sequence[dict[str, Any]], pair: Sequence[str], metric: Metric = ACCURACY
) -> dict[float, list[float]]:
    """Per target sparsity, ``pair[0] − pair[1]`` in the test ``metric``, seed by seed (the seeds both
    have finished), each method at its setting chosen on the validation ``metric`` (:func:`choose`)."""
    first, second = pair
    chosen = {(r["method"], r["sparsity"]): r["hp_key"] for r in choose(summarize(records), metric)}
    acc = {
        (r["method"], _hp_key(r.get("hyperparameters") or {}), r["sparsity"], r["seed"]): r[metric.key]
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


def _signed(x: float, decimals: int = 2) -> str:
    """``+0.24``, ``−0.32`` (a minus sign), ``0.00`` for what rounds to zero (``decimals`` after the
    point)."""
    text = f"{x:+.{decimals}f}"
    zero = f"{0:.{decimals}f}"
    return zero if text in (f"+{zero}", f"-{zero}") else text.replace("-", "−")


def differences_table(
    rows: Sequence[tuple[str, dict[float, list[float]]]], label: str, decimals: int = 2
) -> str:
    """Markdown: one row per ``(setting, paired_differences)``, one column per target sparsity; each cell
    the mean difference and its [min, max] over seeds, with ``decimals`` (``label`` names the
    difference)."""
    sparsities = sorted({s for _, diffs in rows for s in diffs})
    lines = [
        f"| {label} | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " | seeds |",
        "|---|" + "---:|" * len(sparsities) + "---:|",
    ]
    for setting, diffs in rows:
        cells = []
        for s in sparsities:
            d = diffs.get(s)
            if d:
                mean, low, high = (_signed(x, decimals) for x in (statistics.fmean(d), min(d), max(d)))
                cells.append(f"{mean} [{low}, {high}]")
            else:
                cells.append("—")
        n = max((len(d) for d in diffs.values()), default=0)
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def chosen_table(chosen: Sequence[dict[str, Any]], metric: Metric = ACCURACY) -> str:
    """The setting each method ended up with, per sparsity: seeds, its validation ``metric``, achieved
    sparsity, the sparsity training itself reached before pruning (target-sparsity methods) and the mean
    wall time of a run."""
    lines = [
        f"| method | sparsity | chosen setting | {metric.short} | achieved sparsity | zeros before pruning "
        "| s/run | seeds |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in sorted(chosen, key=lambda r: (r["method"], r["sparsity"])):
        hp = ", ".join(f"{k}={v}" for k, v in _flatten(r["hyperparameters"]).items()) or "—"
        trained = r.get("trained_sparsity_mean")
        wall = r.get("wall_seconds_mean")
        lines.append(
            f"| {r['method']} | {100 * r['sparsity']:g}% | {hp} | "
            f"{r[f'{metric.val_key}_mean']:.{metric.decimals}f} | "
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
