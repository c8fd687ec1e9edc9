"""HALO and everything that makes it fast: the penalty (``penalty``), its fused optimizer steps
(``fused``: what they share; ``sgd``, ``adam``: one kernel and driver per optimizer family) and
target-sparsity mode (``target``)."""

from __future__ import annotations

from haloprune.penalties.halo.penalty import DEFAULT_COUPLING, HALO

__all__ = ["DEFAULT_COUPLING", "HALO"]
