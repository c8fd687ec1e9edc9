"""Sparsity schedules shared by the methods that prune gradually and the penalties that are steered."""

from __future__ import annotations


def cubic_sparsity(step: float, final: float, t0: float, t1: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's schedule: ``initial`` before ``t0``, ``final`` after ``t1``, cubic in between.

    ``step``, ``t0`` and ``t1`` are in any common unit (optimizer steps for gradual magnitude pruning,
    fractions of the step budget for target-sparsity HALO).
    """
    if step <= t0:
        return initial
    if step >= t1:
        return final
    return final + (initial - final) * (1.0 - (step - t0) / (t1 - t0)) ** 3
