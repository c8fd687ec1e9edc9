"""The per-layer sparsity report (haloprune.pruning.sparsity)."""

from __future__ import annotations

import pytest
from torch import nn

from haloprune import (
    build_model,
    global_magnitude_prune,
    sparsity_report,
)
from haloprune.pruning import format_sparsity_report


def _pruned() -> nn.Module:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.9)
    return model


def test_sparsity_report_rows_and_table() -> None:
    model = _pruned()
    rows = sparsity_report(model)
    assert [r.name for r in rows] == ["fc1.weight", "fc2.weight", "fc3.weight", "total"]
    assert rows[-1].params == 784 * 300 + 300 * 100 + 100 * 10
    assert rows[-1].sparsity == pytest.approx(0.9, abs=1e-6)
    table = format_sparsity_report(rows)
    assert "fc1.weight" in table and "90.00%" in table
