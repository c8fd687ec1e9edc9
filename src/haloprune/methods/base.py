"""What every way of getting a sparse network shares: a context, typed parameters, one ``run``.

A method gets a :class:`Context` (data, model and optimiser settings, seed, device) and the target
sparsities, and returns an :class:`Outcome`: one record per target sparsity, the number of training
epochs every reported network received (all of them count: pre-training, fine-tuning, rewinding rounds),
and the final state worth keeping (for the report's plots). Methods whose procedure depends on the target
(gradual pruning, lottery tickets, pruning at initialisation) set ``per_sparsity = True`` and are run once
per target; the others (train once, prune at every sparsity) see all targets at once.

A context with a ``checkpoints`` folder makes a method resumable without its knowing: every
:meth:`Context.fit` writes a verified checkpoint at the end of each epoch (``fit<i>.pt`` for the method's
i-th fit), and a method run again with the same folder replays itself: a fit already finished is restored
from its last checkpoint instead of trained, the one cut short continues from its last epoch, exactly as
``haloprune train --resume`` does. What a method computes between its fits is deterministic given the
weights and the RNG state, both of which the checkpoints restore, so the replay ends bit-identical (on
CPU) to a run never interrupted. State a method keeps from *inside* a fit belongs in ``FitState.extras``
(a callback's, e.g. :class:`KeepWeightsAt`), which the checkpoints carry.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from haloprune.build import build_network, seed_everything
from haloprune.config import OptimConfig, RunConfig
from haloprune.core.errors import HaloPruneError
from haloprune.core.io import load_verified
from haloprune.core.params import select_parameters
from haloprune.data import SplitData
from haloprune.penalties import Penalty
from haloprune.pruning import global_magnitude_prune
from haloprune.training.callbacks import Callback, Checkpoint, FitState
from haloprune.training.evaluate import pruned_copy, pruned_record
from haloprune.training.loop import fit


class Params(BaseModel):
    """Base of every method's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Context:
    run: RunConfig
    data: SplitData
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool | None = False
    name: str = "run"
    callbacks: Sequence[Callback] = ()  # given to every fit of the method (e.g. a sweep job's logger)
    # end-of-epoch checkpoints of every fit, to resume the method exactly when it is run again (sweep jobs)
    checkpoints: Path | None = None
    _fits: int = field(default=0, init=False, repr=False)

    def fit(
        self,
        model: nn.Module,
        optim: OptimConfig,
        *,
        seed: int | None = None,
        name: str | None = None,
        penalty: Penalty | None = None,
        callbacks: Sequence[Callback] = (),
        **kw: Any,
    ) -> list[dict[str, Any]]:
        """:func:`~haloprune.training.fit` on this context's data, with its seed and name unless told, its
        progress setting and callbacks (then ``callbacks``); ``kw`` as ``fit`` takes them (``epochs``,
        ``penalty_cfg``, ...). With ``checkpoints``, resumed or replayed from this fit's checkpoint (which
        ``fit`` restores whole: model, penalty, optimizer, metrics rows)."""
        # the method's own hooks run before the checkpoint is written, so it holds what they did
        hooks: list[Callback] = [*self.callbacks, *callbacks]
        resume = None
        if self.checkpoints is not None:
            path = self.checkpoints / f"fit{self._fits}.pt"
            self._fits += 1
            if path.exists():
                try:
                    resume = load_verified(path, map_location=self.device)
                except HaloPruneError as err:  # killed while writing the first: this fit starts over
                    warnings.warn(f"{err}; training this fit from its start", RuntimeWarning, stacklevel=2)
            hooks.append(Checkpoint(path))
        return fit(
            model,
            self.data,
            optim,
            seed=self.seed if seed is None else seed,
            name=self.name if name is None else name,
            progress=self.progress,
            penalty=penalty,
            callbacks=hooks,
            resume=resume,
            **kw,
        )

    def new_model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model, shaped for the data (seeded by ``seed``, default the context's)."""
        seed_everything(self.seed if seed is None else seed)
        return build_network(self.run).to(self.device)

    def record(self, model: nn.Module, target: float, **extra: Any) -> dict[str, Any]:
        """Evaluate a (pruned) model: achieved sparsity, validation and test accuracy, nonzeros."""
        row = pruned_record(
            model, self.data, target, batch_size=self.run.optim.eval_batch_size, **self.run.prune.selection()
        )
        row.update(extra)
        return row

    def prunable(self, model: nn.Module) -> list[str]:
        """The weights this run prunes: those of the layers in ``prune.scope``."""
        return select_parameters(model, **self.run.prune.selection())

    def prune(self, model: nn.Module, target: float) -> dict[str, torch.Tensor]:
        """Global magnitude pruning of the layers in ``prune.scope``, in place; returns the masks."""
        return global_magnitude_prune(model, target, **self.run.prune.selection())

    def prune_copy(self, model: nn.Module, target: float) -> nn.Module:
        """A copy of ``model`` pruned once after training, as ``prune`` says (``of``, ``zero_below``;
        BatchNorm statistics recalibrated if ``recalibrate_bn``)."""
        prune = self.run.prune
        pruned, _ = pruned_copy(
            model,
            target,
            self.data,
            **prune.selection(),
            recalibrate_bn=prune.recalibrate_bn,
            batch_size=self.run.optim.eval_batch_size,
            of=prune.of,
            zero_below=prune.zero_below,
        )
        return pruned


class KeepWeightsAt(Callback):
    """Keeps a copy of the model's ``state_dict`` as it is after optimizer step ``step`` (e.g. the weights
    a lottery ticket rewinds to), in ``FitState.extras`` so that checkpoints carry it; read ``weights``
    after the fit (None if the fit never reached ``step``)."""

    def __init__(self, step: int, key: str = "kept_weights") -> None:
        self.step, self.key = step, key
        self.weights: dict[str, torch.Tensor] | None = None

    def on_step_end(self, state: FitState) -> None:
        if state.step == self.step:
            state.extras[self.key] = {k: v.detach().clone() for k, v in state.model.state_dict().items()}

    def on_fit_end(self, state: FitState) -> None:
        self.weights = state.extras.get(self.key)


@dataclass
class Outcome:
    records: list[dict[str, Any]]
    epochs_used: int
    state: dict[str, Any] = field(default_factory=dict)  # e.g. {"model": state_dict, "penalty": state_dict}


class Method:
    """Base class. Subclasses set ``Params`` (a :class:`Params` model) and implement :meth:`run`."""

    Params: ClassVar[type[Params]] = Params
    per_sparsity: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)

    @classmethod
    def job_params(cls, params: dict[str, Any], optimizer: str) -> dict[str, Any]:
        """``params`` as a sweep job's key records them (defaults that changed what a run with
        ``optimizer`` does written out); the same run either way."""
        return params

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError
