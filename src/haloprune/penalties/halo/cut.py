"""Target mode's cuts at the cost of the memory they read: a few compiled passes instead of a selection.

The exact control needs, at every step, the ``k``-th smallest score ``|w|·λ²`` of all penalised weights:
before the step to set ξ (the value itself), and after it to set the weights the step revived back to
zero (only *which* weights: the ``k`` lowest nonzero ones). Done eagerly that is a dozen passes over the
weights, a concatenation and a sort of a band of scores: about as long as the whole step of a small model.

Here one compiled pass writes every score into one flat buffer (and counts the nonzero weights), and the
``k``-th smallest is found by *counting*, not sorting: each search pass counts the scores at or below
two thresholds, placed where the counts so far say the ``k``-th lies (interpolation in the empirical
distribution, starting around the last step's cut, which moves little). Where a threshold ``g`` has
exactly ``k`` scores at or below it, those ``k`` are the ``k`` lowest, ties and all (were the ``k``-th
tied with one above it, more than ``k`` would lie at or below ``g``): the top-up zeroes them in one more
pass with no need of the value. The value itself, when asked for, is found once the ``k``-th is within a
couple of scores of the bracket's ends, by steps of "the next score above" / "the next below". A search
that has not ended after :data:`_PASSES` passes falls back to ``torch.kthvalue``. The answer is always
exactly ``kthvalue``'s: the passes change the cost, never the result.

Every pass is compiled once per structure (``torch.compile``; the passes over the weights are entered
without guards, see :mod:`~.launch`). Below :data:`COMPILED_FROM` penalised weights the eager selection
is used: a small model's step is cheap, and compiling would cost more than it saves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from haloprune.penalties.halo.fused import Tensors, lam_squared
from haloprune.penalties.halo.launch import Launches, launch

#: Fewest penalised weights for which the compiled passes are used (the eager selection below it).
COMPILED_FROM = 1 << 16
_PASSES = 12  # search passes before falling back to torch.kthvalue
_SPREAD = (2.0**-12, 2.0**-4)  # the first pass counts at the guess ∓ this fraction of it, at least / most
_FINISH = 2  # the stepping finish takes over when the k-th is this many scores from a bound


class CutTensors(NamedTuple):
    ws: Tensors  # the penalised weights
    lams: Tensors  # their λ, shaped like them (views)
    scores: Tensors  # the flat score buffer, per weight tensor, shaped like it (views)


class CutValues(NamedTuple):
    hp: torch.Tensor  # zero_at_or_below: 0-dim, the threshold; write_scores: 2, the first probes
    out: torch.Tensor  # int64, 3 elements: write_scores counts the nonzero weights and the scores at or
    # below each probe into them


class CutConstants(NamedTuple):
    lambda_min: float
    lambda_max: float
    zeros_last: bool  # a zero weight scores +inf (the top-up: only nonzero weights compete), else 0


def write_scores(t: CutTensors, s: CutValues, c: CutConstants) -> None:
    """``t.scores[i] = |w|·λ²`` (λ read and clamped as the fused step reads it); ``s.out``: how many
    weights are nonzero, and how many scores are at or below each of the probes ``s.hp`` (the search's
    first pass, in the same one)."""
    out = None
    for w, lam, score in zip(t.ws, t.lams, t.scores, strict=True):
        scale = lam_squared(lam, c.lambda_min, c.lambda_max)
        value = w.abs().to(scale.dtype) * scale
        if c.zeros_last:
            value = torch.where(w != 0, value, torch.full_like(value, math.inf))
        score.copy_(value)
        n = _count_dtype(w)
        part = torch.stack(
            [(w != 0).sum(dtype=n), (value <= s.hp[0]).sum(dtype=n), (value <= s.hp[1]).sum(dtype=n)]
        )
        part = part.to(torch.int64)
        out = part if out is None else out + part
    if out is not None:
        s.out.copy_(out)


def _count_dtype(x: torch.Tensor) -> torch.dtype:
    """What a count over ``x`` is summed in: int32 where it cannot overflow (half the work of int64 in a
    vectorised loop), int64 beyond."""
    return torch.int32 if x.numel() < 2**31 else torch.int64


def zero_at_or_below(t: CutTensors, s: CutValues, c: CutConstants) -> None:
    """Set to zero the weights whose score is at most ``s.hp`` (zeros score +inf: they stay as they are)."""
    for w, score in zip(t.ws, t.scores, strict=True):
        w.copy_(torch.where(score <= s.hp, torch.zeros_like(w), w))


class Flat(NamedTuple):
    scores: Tensors  # one flat tensor of scores


class Probe(NamedTuple):
    hp: torch.Tensor  # count_at: 2 thresholds; next_above / next_below: 0-dim, the bound
    counts: torch.Tensor  # int64, 2 elements: what the pass counts, written here
    value: torch.Tensor  # 1 element: next_above / next_below write the score found here


class Nothing(NamedTuple):
    pass


def count_at(t: Flat, s: Probe, c: Nothing) -> None:
    """How many scores are at or below each of the 2 thresholds."""
    (x,) = t.scores
    n = _count_dtype(x)
    s.counts.copy_(torch.stack([(x <= s.hp[0]).sum(dtype=n), (x <= s.hp[1]).sum(dtype=n)]))


def next_above(t: Flat, s: Probe, c: Nothing) -> None:
    """The smallest score above the bound, and how many are at or below it."""
    (x,) = t.scores
    v = torch.where(x > s.hp, x, torch.full_like(x, math.inf)).min()
    s.value.copy_(v.reshape(1))
    s.counts[:1].copy_((x <= v).sum(dtype=_count_dtype(x)).reshape(1))


def next_below(t: Flat, s: Probe, c: Nothing) -> None:
    """The largest score below the bound, and how many are below it."""
    (x,) = t.scores
    v = torch.where(x < s.hp, x, torch.full_like(x, -math.inf)).max()
    s.value.copy_(v.reshape(1))
    s.counts[:1].copy_((x < v).sum(dtype=_count_dtype(x)).reshape(1))


class Cuts:
    """The compiled passes for one set of penalised weights, their buffers, and the last cuts (each
    search starts from the last one, moved as it moved the step before): held by target mode."""

    def __init__(self) -> None:
        self.launches = Launches(kept=_KERNELS)  # one direct call per kernel and constants: all held
        self.key: tuple[int, ...] | None = None  # the weights and λ the buffers were made for
        self.held: Tensors = []  # ... kept alive, so that their ids stay theirs
        self.flat = torch.empty(0)
        self.views: Tensors = []
        self.out = torch.empty(0, dtype=torch.int64)
        self.cuts: dict[str, tuple[float, float]] = {}  # per search: its last two cuts
        self.first: list[tuple[float, int]] = []  # the first probes and their counts, from write_scores
        self.spread = _SPREAD[1]

    def scores(
        self, ws: Tensors, lams: Tensors, box: tuple[float, float], zeros_last: bool, name: str
    ) -> int:
        """Write every weight's score into the flat buffer (:attr:`flat`) and count the scores at the first
        probes of the search ``name`` will make; how many weights are nonzero."""
        key = tuple(map(id, [*ws, *lams]))
        if key != self.key:
            dtype = torch.promote_types(lams[0].dtype, torch.float32)
            device = ws[0].device
            self.flat = torch.empty(sum(w.numel() for w in ws), dtype=dtype, device=device)
            parts = self.flat.split([w.numel() for w in ws])
            self.views = [v.view_as(w) for v, w in zip(parts, ws, strict=True)]
            self.out = torch.zeros(3, dtype=torch.int64, device=device)
            self.key, self.held = key, [*ws, *lams]
        last, before = self.cuts.get(name, (0.0, 0.0))
        drift = last / before if 0.0 < before < math.inf and 0.0 < last < math.inf else 1.0
        self.spread = min(max(abs(drift - 1.0) / 2, _SPREAD[0]), _SPREAD[1])
        guess = last * drift
        g = torch.tensor((guess * (1.0 - self.spread), guess * (1.0 + self.spread)), dtype=self.flat.dtype)
        t = CutTensors(ws, lams, self.views)
        s = CutValues(g.to(self.flat.device), self.out)
        launch(write_scores, self.launches, t, s, CutConstants(*box, zeros_last))
        live, *counts = self.out.tolist()
        self.first = list(zip(g.tolist(), counts, strict=True)) if 0.0 < guess < math.inf else []
        return live

    def zero(self, ws: Tensors, lams: Tensors, box: tuple[float, float], threshold: float) -> None:
        """Zero the weights whose score (as last written, zeros last) is at most ``threshold``."""
        g = torch.tensor(threshold, dtype=self.flat.dtype, device=self.flat.device)
        t = CutTensors(ws, lams, self.views)
        launch(zero_at_or_below, self.launches, t, CutValues(g, self.out), CutConstants(*box, True))

    def kth(self, k: int, value: bool, name: str) -> tuple[float, int | None]:
        """:func:`search` in the scores last written (by :meth:`scores`, for the same ``name``)."""
        cut, counted = search(self.flat, k, None, value, self.launches, self.first, self.spread)
        self.cuts[name] = (cut, self.cuts.get(name, (0.0, 0.0))[0])
        return cut, counted


def search(
    scores: torch.Tensor,
    k: int,
    near: float | None,
    value: bool = True,
    launches: Launches | None = None,
    counted: list[tuple[float, int]] | None = None,
    spread: float = _SPREAD[1],
) -> tuple[float, int | None]:
    """``scores.kthvalue(k)`` for non-negative scores (``+inf`` allowed), by counting passes (module doc),
    and how many scores are at or below it (None where not counted); with ``value=False`` a threshold with
    exactly ``k`` scores at or below it may be returned instead. ``near``: a guess, where the first pass
    counts (at ``near·(1 ∓ spread)``); or ``counted``, that pass already made (its probes and their
    counts). ``launches``: where to keep the passes' direct calls (:mod:`~.launch`; None: guarded)."""
    n = scores.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    passes = _Passes(scores, launches)
    if not counted:
        if near is None or not 0.0 < near < math.inf:
            return float(scores.kthvalue(k).values), None
        counted = passes.count_at((near * (1.0 - spread), near * (1.0 + spread)))
    lo, c_lo, hi, c_hi = -math.inf, 0, math.inf, n  # c(lo) < k <= c(hi): the k-th lies in (lo, hi]
    top = float(torch.finfo(scores.dtype).max)
    width = n
    factor = 1.0 + spread  # how far an unbounded side is searched, growing 8-fold (in log) per pass
    for made in range(1, _PASSES + 1):
        for x, c in counted:
            if c >= k and x < hi:
                hi, c_hi = x, c
            elif c < k and x > lo:
                lo, c_lo = x, c
        if c_hi == k and not value and hi < math.inf:
            return hi, k
        if lo > -math.inf and hi < math.inf and min(k - c_lo, c_hi - k + 1) <= _FINISH:
            return passes.finish(k, lo, c_lo, hi, c_hi)
        if lo == -math.inf:  # below every probe: go down (to 0, the least score)
            if hi == 0.0:
                return 0.0, c_hi  # k <= c(0): scores are non-negative
            factor = factor**8 if factor < 256 else 2.0**64
            probes = (hi / factor**4, hi / factor) if hi / factor**4 > 0 else (0.0, hi / factor)
        elif hi == math.inf:  # above every probe: go up (to the largest float, then +inf)
            if lo >= top:
                return math.inf, n
            factor = factor**8 if factor < 256 else 2.0**64
            probes = (min(lo * factor, top), min(lo * factor**4, top))
        else:  # where the counts so far place the k-th, give or take a margin: in log space (scores
            # span orders of magnitude) where lo > 0; half the bracket where it narrowed too slowly
            shrunk, width = c_hi - c_lo < width / 2, c_hi - c_lo
            margin = 0.5 * math.sqrt(width)
            at = (k - 0.5 - margin, k + 0.5 + margin)
            probes = tuple(_interpolate(lo, c_lo, hi, c_hi, x) for x in at)
            if not shrunk:
                probes = (_interpolate(lo, c_lo, hi, c_hi, k - 0.5), _midpoint(lo, hi))
        if made == _PASSES:
            break
        counted = passes.count_at(probes)
    return float(scores.kthvalue(k).values), None


class _Passes:
    """A search's passes over ``scores`` (compiled; entered directly where ``launches`` is given)."""

    def __init__(self, scores: torch.Tensor, launches: Launches | None) -> None:
        self.t, self.launches = Flat([scores]), launches
        self.dtype, self.device = scores.dtype, scores.device
        self.counts = torch.zeros(2, dtype=torch.int64, device=scores.device)
        self.value = torch.zeros(1, dtype=scores.dtype, device=scores.device)

    def run(self, kernel: Callable[[Flat, Probe, Nothing], None], hp: torch.Tensor) -> list[int]:
        launch(kernel, self.launches, self.t, Probe(hp.to(self.device), self.counts, self.value), Nothing())
        return self.counts.tolist()

    def count_at(self, probes: tuple[float, float]) -> list[tuple[float, int]]:
        """Each probe, as the scores' dtype holds it, and how many scores are at or below it."""
        g = torch.tensor(probes, dtype=self.dtype)
        return list(zip(g.tolist(), self.run(count_at, g), strict=True))

    def finish(self, k: int, lo: float, c_lo: int, hi: float, c_hi: int) -> tuple[float, int | None]:
        """The ``k``-th smallest, ``k`` being within :data:`_FINISH` scores of an end of the bracket
        ``(lo, hi]``: step to it one distinct score at a time from the nearer end."""
        if k - c_lo <= c_hi - k + 1:
            v = lo
            while True:
                c = self.run(next_above, torch.tensor(v, dtype=self.dtype))[0]
                v = float(self.value[0])
                if c >= k:
                    return v, c
        v = float(
            torch.nextafter(torch.tensor(hi, dtype=self.dtype), torch.tensor(math.inf, dtype=self.dtype))
        )
        at_or_below = c_hi  # below v: at or below hi
        while True:
            c = self.run(next_below, torch.tensor(v, dtype=self.dtype))[0]
            v = float(self.value[0])
            if c < k:
                return v, at_or_below
            at_or_below = c


_KERNELS = 6  # write_scores (twice: zeros last or not), zero_at_or_below, count_at, next_above, next_below


def _interpolate(lo: float, c_lo: int, hi: float, c_hi: int, at: float) -> float:
    """Where the count ``at`` lies between ``(lo, c_lo)`` and ``(hi, c_hi)``, interpolated in log space
    (linearly from 0), strictly inside ``(lo, hi)`` (else their midpoint)."""
    f = (at - c_lo) / (c_hi - c_lo)
    x = lo * (hi / lo) ** f if lo > 0 else lo + f * (hi - lo)
    return x if lo < x < hi else _midpoint(lo, hi)


def _midpoint(lo: float, hi: float) -> float:
    """Halfway from ``lo`` to ``hi``: geometrically where ``lo > 0``."""
    x = math.sqrt(lo) * math.sqrt(hi) if lo > 0 else lo + (hi - lo) / 2
    return x if lo < x < hi else lo + (hi - lo) / 2
