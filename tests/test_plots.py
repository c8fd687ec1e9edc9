"""Plots that must not fail on degenerate but legitimate data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from haloprune.experiments.plots import plot_lambda


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
