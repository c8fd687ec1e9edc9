"""Plots that must not fail on degenerate but legitimate data."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from haloprune.experiments.plots import plot_lambda, plot_sweep_accuracy

ROWS = [{"method": "a", "sparsity": s, "accuracy_mean": 90.0 - s, "accuracy_std": 0.0} for s in (0.5, 0.9)]


@pytest.mark.parametrize(
    "lam",
    [
        np.full(500, 1e-3),
        # coupled Adam moves every λ by about the same step: a spread at float32 resolution
        np.linspace(0.9490081, 0.94900835, 500, dtype=np.float32),
        np.geomspace(1e-3, 10, 500),
    ],
    ids=["all-equal", "equal-to-float-resolution", "spread"],
)
def test_lambda_plot_any_spread(tmp_path: Path, lam: np.ndarray) -> None:
    out = plot_lambda(lam, np.linspace(0, 1, lam.size), tmp_path / "lam.png")
    assert out.exists() and out.stat().st_size > 0


def test_figures_are_written_atomically_in_the_format_of_their_suffix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = plot_sweep_accuracy(ROWS, tmp_path / "a.png")
    svg = plot_sweep_accuracy(ROWS, tmp_path / "a.svg")
    assert png.read_bytes()[:4] == b"\x89PNG" and b"<svg" in svg.read_bytes()[:2000]
    before, open_figures = png.read_bytes(), len(plt.get_fignums())

    def broken(self: Figure, fname: str, **_: object) -> None:
        Path(fname).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_sweep_accuracy(ROWS, png)
    assert png.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.svg"]
    assert len(plt.get_fignums()) == open_figures  # the figure is closed either way
