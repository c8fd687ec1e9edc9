"""Result records → figures (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_accuracy_vs_sparsity(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test accuracy against sparsity, one line per method (x axis: fraction of weights kept, log scale)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in dict.fromkeys(r["method"] for r in records):
        rows = sorted((r for r in records if r["method"] == method), key=lambda r: r["sparsity"])
        kept = [100 * (1 - r["sparsity"]) for r in rows]
        ax.plot(kept, [r["accuracy"] for r in rows], marker="o", label=method)
    ax.set_xscale("log")
    ticks = sorted({100 * (1 - r["sparsity"]) for r in records}, reverse=True)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("weights kept (%)  ← sparser")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_sweep_accuracy(chosen: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Mean test accuracy ± std over seeds against sparsity, one line per method."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in dict.fromkeys(r["method"] for r in chosen):
        rows = sorted((r for r in chosen if r["method"] == method), key=lambda r: r["sparsity"])
        kept = [100 * (1 - r["sparsity"]) for r in rows]
        ax.errorbar(
            kept,
            [r["accuracy_mean"] for r in rows],
            yerr=[r["accuracy_std"] for r in rows],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log")
    ticks = sorted({100 * (1 - r["sparsity"]) for r in chosen}, reverse=True)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("weights kept (%)  ← sparser")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
