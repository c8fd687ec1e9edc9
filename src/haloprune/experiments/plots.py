"""Result records → figures (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from haloprune.core.io import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_sweep_accuracy(
    chosen: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "",
    key: str = "accuracy",
    label: str = "test accuracy (%)",
) -> Path:
    """Mean test accuracy (or the value ``key``, named ``label``: ``<key>_mean`` and ``<key>_std`` of
    each row) ± std over seeds against sparsity, one line per method (x: weights kept, log scale; no
    error bars from a single seed)."""
    one_seed = all(r.get("n", 1) == 1 for r in chosen)
    ylabel = label + ("" if one_seed else ", mean ± std over seeds")
    methods = list(dict.fromkeys(r["method"] for r in chosen))
    many = len(methods) > 8
    fig, ax = plt.subplots(figsize=(8.4 if many else 6.4, 4.6 if many else 4.2), dpi=120)
    colors = plt.get_cmap("tab20" if len(methods) > 10 else "tab10").colors
    for i, method in enumerate(methods):
        rows = sorted((r for r in chosen if r["method"] == method), key=lambda r: r["sparsity"])
        kept = [100 * (1 - r["sparsity"]) for r in rows]
        ax.errorbar(
            kept,
            [r[f"{key}_mean"] for r in rows],
            yerr=[r[f"{key}_std"] for r in rows],
            marker="o",
            capsize=3,
            label=method,
            color=colors[i % len(colors)],
        )
    ax.set_xscale("log")
    ticks = sorted({100 * (1 - r["sparsity"]) for r in chosen}, reverse=True)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("weights kept (%)  ← sparser")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG without one) and close it."""
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.removeprefix(".") or "png")
    finally:
        plt.close(fig)
    return path


def plot_layer_sparsity(per_method: dict[str, dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Grouped bars: the sparsity of each layer, one bar per method."""
    layers = list(dict.fromkeys(layer for d in per_method.values() for layer in d))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(layers) + 2) + 1.6, 4.0), dpi=120)
    width = 0.8 / max(1, len(per_method))
    x = np.arange(len(layers))
    colors = plt.get_cmap("tab20" if len(per_method) > 10 else "tab10").colors
    for i, (method, d) in enumerate(per_method.items()):
        values = [100 * d.get(layer, 0.0) for layer in layers]
        ax.bar(x + i * width, values, width, label=method, color=colors[i % len(colors)])
    ax.set_xticks(x + 0.4 - width / 2, layers, rotation=20, fontsize=8)
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_lambda(lam: Any, w: Any, path: str | Path, title: str = "") -> Path:
    """HALO's learned λ: histogram, and |w| against λ."""
    lam, w = np.asarray(lam), np.asarray(w)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 3.8), dpi=120)
    log_lam = np.log10(lam)
    lo, hi = float(log_lam.min()), float(log_lam.max())
    # λ all (nearly) equal, e.g. every one at its floor: one visible bin instead of numpy refusing 80
    # bins over a range below float resolution
    span = (lo - 0.5, hi + 0.5) if hi - lo < 1e-3 else (lo, hi)
    a1.hist(log_lam, bins=80, range=span)
    a1.set_xlabel("log10 λ")
    a1.set_ylabel("weights")
    idx = np.random.default_rng(0).choice(len(lam), size=min(len(lam), 20000), replace=False)
    a2.scatter(lam[idx], np.maximum(w[idx], 1e-8), s=1, alpha=0.3)
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("λ")
    a2.set_ylabel("|w| (floored at 1e-8)")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def plot_spectra(per_method: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Normalised, sorted activation-covariance eigenvalues per hidden layer, one line per method."""
    layers = list(dict.fromkeys(layer for d in per_method.values() for layer in d))
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), dpi=120, squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for method, d in per_method.items():
            if layer in d:
                ev = d[layer]
                ax.plot(range(1, len(ev) + 1), ev.clamp_min(1e-12), label=method, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue index")
        ax.set_title(layer, fontsize=9)
    axes[0][0].set_ylabel("normalised eigenvalue")
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
