"""A method run with ``Context.checkpoints`` and stopped anywhere ends, when run again with the same folder,
bit-identical to a run never stopped: every method kind, stopped in its first fit, in a later fit, and
after its last fit (replayed from checkpoints without training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from haloprune.methods import METHODS
from haloprune.training.callbacks import Callback, FitState
from tests.methods.test_methods import _ctx


class Stop(Exception):
    """Stands for the process being killed."""


class StopAfter(Callback):
    """Raises at the end of the ``n``-th epoch (over all the method's fits), before its checkpoint."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise Stop


class CountEpochs(Callback):
    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, state: FitState, row: dict[str, Any]) -> None:
        self.epochs += 1


# kind, params, targets: every method kind that trains in several fits, with state inside a fit (imp's
# rewind point, gmp's masks, halo's λ and controller, sparsevd's log α)
CASES = [
    ("finetune", {}, [0.9, 0.95]),  # dense fit, then one fine-tuning fit per target
    ("gmp", {"every": 3}, [0.9]),
    ("imp", {"rounds": 2, "rewind_fraction": 0.5}, [0.9]),  # three fits; the rewind point mid-fit
    ("imp", {"rounds": 1, "rewind_fraction": 0.0}, [0.9]),  # rewound to its initialisation
    ("penalty", {"penalty": {"name": "halo", "xi": 1e-4, "psi": 1e-3}}, [0.9, 0.95]),
    ("target", {"penalty": {"name": "halo"}}, [0.9]),
    ("penalty", {"penalty": {"name": "adaptive-lasso", "xi": 1e-4}}, [0.9]),  # two fits
    ("snip", {"samples": 50}, [0.9]),
    ("sparsevd", {"kl_warmup_epochs": 1.0}, [0.9]),
]


def _run(kind: str, params: dict[str, Any], targets: list[float], **ctx_kw: Any) -> Any:
    ctx = _ctx(epochs=3)
    for k, v in ctx_kw.items():
        setattr(ctx, k, v)
    return METHODS[kind](**params).run(ctx, targets)


def _same(a: Any, b: Any) -> None:
    strip = {"seconds", "images_per_s"}  # timings differ run to run
    ra = [{k: v for k, v in r.items() if k not in strip} for r in a.records]
    rb = [{k: v for k, v in r.items() if k not in strip} for r in b.records]
    assert ra == rb
    assert a.epochs_used == b.epochs_used
    _equal(a.state, b.state, "state")


def _equal(a: Any, b: Any, where: str) -> None:
    """``a`` and ``b`` hold the same values, tensors bit for bit (nested dicts and lists)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: other keys"
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: other length"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize(("kind", "params", "targets"), CASES, ids=IDS)
def test_a_stopped_method_resumes_bit_identical(
    kind: str, params: dict[str, Any], targets: list[float], tmp_path: Path
) -> None:
    reference = _run(kind, params, targets)
    total = CountEpochs()
    _run(kind, params, targets, checkpoints=tmp_path / "count", callbacks=[total])
    # stopped in the first fit, in the last fit (or the middle one), and after every fit ended
    for stop in sorted({2, total.epochs, total.epochs + 1}):
        folder = tmp_path / f"stop{stop}"
        if stop <= total.epochs:
            with pytest.raises(Stop):
                _run(kind, params, targets, checkpoints=folder, callbacks=[StopAfter(stop)])
        else:
            _run(kind, params, targets, checkpoints=folder)
        trained = CountEpochs()
        resumed = _run(kind, params, targets, checkpoints=folder, callbacks=[trained])
        _same(reference, resumed)
        # only the epochs not yet checkpointed were trained again
        assert trained.epochs == total.epochs - min(stop - 1, total.epochs)
