"""Sparsity schedules (haloprune.core.schedules)."""

from __future__ import annotations

import pytest

from haloprune.core.schedules import cubic_sparsity


def test_cubic_schedule_values() -> None:
    assert cubic_sparsity(0, 0.9, 10, 110) == 0.0
    assert cubic_sparsity(10, 0.9, 10, 110) == 0.0
    assert cubic_sparsity(110, 0.9, 10, 110) == 0.9
    assert cubic_sparsity(500, 0.9, 10, 110) == 0.9
    assert cubic_sparsity(60, 0.9, 10, 110) == pytest.approx(0.9 * (1 - 0.5**3))
    values = [cubic_sparsity(t, 0.98, 0, 100) for t in range(0, 101, 5)]
    assert values == sorted(values)  # monotone
