"""Target mode's compiled cuts (:mod:`haloprune.penalties.halo.cut`): the search by counting passes gives
``torch.kthvalue``'s answer whatever the scores and the guess, and a run through them is the run through
the eager selection, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from haloprune import HALO
from haloprune.penalties.halo import cut, target
from haloprune.penalties.halo.launch import Launches
from haloprune.penalties.halo.target import TargetMode


def _scores(kind: str, n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    x = torch.rand(n, generator=g, dtype=torch.float64)
    if kind == "spread":  # magnitudes over orders of magnitude, as |w|·λ² are
        x = x**8 * 1e-6
    elif kind == "dead":  # most weights zero (the exact control's scores)
        x[torch.rand(n, generator=g) < 0.9] = 0.0
    elif kind == "revived":  # most weights zero before the top-up: they score +inf
        x[torch.rand(n, generator=g) < 0.9] = float("inf")
    elif kind == "ties":
        x = torch.randint(0, 5, (n,), generator=g).double()
    elif kind == "cluster":  # a dense cluster next to a sparse tail: interpolation's worst case
        x = torch.where(torch.rand(n, generator=g) < 0.95, 1e-9 + 1e-12 * x, x)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["uniform", "spread", "dead", "revived", "ties", "cluster"])
def test_search_finds_kthvalue_whatever_the_guess(kind: str, dtype: torch.dtype) -> None:
    """The value, and the count at or below it where given, equal ``kthvalue``'s; a threshold returned
    instead of the value (``value=False``) has exactly ``k`` scores at or below it. Guesses on the answer,
    near it, far off either way, or none; through guarded and direct calls."""
    g = torch.Generator().manual_seed(0)
    scores = _scores(kind, 5000, dtype, g)
    launches = Launches()
    ks = [1, 2, 2500, 4499, 4500, 4501, 4999, 5000, *torch.randint(1, 5001, (4,), generator=g).tolist()]
    for k in ks:
        want = float(scores.kthvalue(k).values)
        finite = want if 0 < want < float("inf") else 1e-3
        for near in (None, finite, finite * 1.01, finite * 0.99, finite * 100, finite / 100, 1e-30, 1e30):
            for value in (True, False):
                got, at_or_below = cut.search(scores, k, near, value, launches if k % 2 else None)
                counted = int((scores <= got).sum())
                if value or got == want:
                    assert got == want, (k, near, value)
                else:
                    assert counted == k, (k, near)
                assert at_or_below is None or at_or_below == counted, (k, near, value)


def test_search_takes_the_first_pass_already_counted() -> None:
    """The top-up counts its first probes in the pass that writes the scores: handed to the search, they
    are used, not counted again."""
    scores = torch.rand(5000, generator=torch.Generator().manual_seed(1))
    probes = (0.4, 0.41)
    counted = [(p, int((scores <= p).sum())) for p in torch.tensor(probes).tolist()]
    passes: list[object] = []
    original = cut._Passes.count_at

    def count_at(self, probes):  # type: ignore[no-untyped-def]
        passes.append(probes)
        return original(self, probes)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(cut._Passes, "count_at", count_at)
        k = counted[0][1] + 1
        assert cut.search(scores, k, None, True, None, counted)[0] == float(scores.kthvalue(k).values)
    assert probes not in passes


def _run(monkeypatch: pytest.MonkeyPatch, compiled: bool, optimizer: str, control: str) -> list[torch.Tensor]:
    """A target-mode run of 30 steps (a 20-step budget: the ramp, then its end held), its weights and λ
    after every step; through the compiled cuts or the eager selection."""
    monkeypatch.setattr(target, "COMPILED_FROM", 1000)
    with pytest.MonkeyPatch.context() as m:
        if not compiled:
            m.setattr(TargetMode, "_compiled", lambda self, lams, n: False)
        return _train(optimizer, control)


def _train(optimizer: str, control: str) -> list[torch.Tensor]:
    model, halo, step = _attached(0.9, 20, optimizer, control)
    states = []
    for _ in range(30):
        step()
        states += [p.detach().clone() for p in model.parameters()] + [halo.lam.detach().clone()]
    return states


def _attached(
    sparsity: float, total_steps: int, optimizer: str = "adamw", control: str = "exact"
) -> tuple[nn.Module, HALO, Callable[[], None]]:
    """A small MLP (2,800 penalised weights) with target mode attached to its optimizer, and its step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(60, 40), nn.ReLU(), nn.Linear(40, 10))
    halo = HALO(model, target_sparsity=sparsity, target_control=control)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    halo.attach(opt, total_steps=total_steps)
    x, y = torch.randn(128, 60), torch.randint(0, 10, (128,))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return model, halo, step


@pytest.mark.parametrize(("optimizer", "control"), [("sgd", "exact"), ("adamw", "exact"), ("adamw", "hard")])
def test_compiled_cuts_train_exactly_as_the_eager_selection(
    monkeypatch: pytest.MonkeyPatch, optimizer: str, control: str
) -> None:
    """Bit for bit, at every step: the same ξ before each step, the same zeros after it (and the compiled
    path was taken: the test cannot pass on the eager path twice)."""
    searches: list[int] = []
    original = cut.Cuts.kth

    def kth(self, k, value, name):  # type: ignore[no-untyped-def]
        searches.append(k)
        return original(self, k, value, name)

    monkeypatch.setattr(cut.Cuts, "kth", kth)
    eager = _run(monkeypatch, False, optimizer, control)
    assert not searches
    fast = _run(monkeypatch, True, optimizer, control)
    assert len(searches) >= 20
    assert all(torch.equal(a, b) for a, b in zip(eager, fast, strict=True))


def test_the_count_is_taken_again_after_the_weights_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between steps the exact control reuses the count the top-up left, unless something wrote to the
    weights since (their version counters): then it counts them again."""
    monkeypatch.setattr(target, "COMPILED_FROM", 1000)
    counts: list[int] = []
    original = target._counts

    def counted(weights, where):  # type: ignore[no-untyped-def]
        counts.append(1)
        return original(weights, where)

    monkeypatch.setattr(target, "_counts", counted)
    model, halo, step = _attached(0.5, 10)
    for _ in range(12):
        step()
    counts.clear()
    step()
    assert not counts  # nothing written between the steps: the top-up's count
    with torch.no_grad():
        model[0].weight[:20] = 0.0  # a write the count did not see
    density = sum(int(torch.count_nonzero(w)) for w in halo.weights()) / halo.num_penalized
    step()
    assert counts and halo.controller.density == density


def test_the_passes_run_without_guards_once_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass a step makes (scores both ways, the search's counts and steps, the zeroing) keeps its
    direct call: after warm-up no step makes a new one (none evicted by another, as a plan's 4 would be)."""
    from haloprune.penalties.halo import launch

    monkeypatch.setattr(target, "COMPILED_FROM", 1000)
    made: list[object] = []
    original = launch._direct

    def direct(kernel, t, s, c):  # type: ignore[no-untyped-def]
        made.append(kernel)
        return original(kernel, t, s, c)

    monkeypatch.setattr(launch, "_direct", direct)
    _, _, step = _attached(0.9, 20)
    for i in range(40):
        if i == 30:
            assert cut.next_above in made or cut.next_below in made  # the search's finish was taken
            made.clear()
        step()
    assert made == []
