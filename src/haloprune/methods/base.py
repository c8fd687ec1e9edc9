"""What every way of getting a sparse network shares: a context, typed parameters, one ``run``.

A method gets a :class:`Context` (data, model and optimiser settings, seed, device) and the target
sparsities, and returns an :class:`Outcome`: one record per target sparsity, the number of training
epochs every reported network received (all of them count: pre-training, fine-tuning, rewinding rounds),
and the final state worth keeping (for the report's plots). Methods whose procedure depends on the target
(gradual pruning, lottery tickets, pruning at initialisation) set ``per_sparsity = True`` and are run once
per target; the others (train once, prune at every sparsity) see all targets at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from haloprune.build import build_network, seed_everything
from haloprune.config import OptimConfig, RunConfig
from haloprune.core.params import select_parameters
from haloprune.data import SplitData
from haloprune.pruning import global_magnitude_prune
from haloprune.training.callbacks import Callback
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

    def fit(
        self,
        model: nn.Module,
        optim: OptimConfig,
        *,
        seed: int | None = None,
        name: str | None = None,
        **kw: Any,
    ) -> list[dict[str, Any]]:
        """:func:`~haloprune.training.fit` on this context's data, with its seed and name unless told, its
        progress setting and callbacks; ``kw`` as ``fit`` takes them (``epochs``, ``penalty``, ...)."""
        return fit(
            model,
            self.data,
            optim,
            seed=self.seed if seed is None else seed,
            name=self.name if name is None else name,
            progress=self.progress,
            callbacks=self.callbacks,
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

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError
