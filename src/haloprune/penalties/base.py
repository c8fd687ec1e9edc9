"""The penalty interface shared by every sparsity-inducing regulariser.

A penalty is an ``nn.Module`` built from the model it regularises. Calling it returns a scalar that is
added to the task loss; its own learned parameters (HALO's λ) are ``nn.Parameter`` s, so they are in
``penalty.parameters()`` (give them to the optimizer) and in ``penalty.state_dict()``::

    penalty = HALO(model, xi=1e-6, psi=1e-3)
    opt = torch.optim.SGD([*model.parameters(), *penalty.parameters()], lr=0.1, momentum=0.9)
    penalty.attach(opt)              # keeps λ in its safe range after every step
    loss = F.cross_entropy(model(x), y) + penalty()

The model is held by reference but not registered as a submodule, so the penalty's ``state_dict`` and
``parameters()`` hold only its own state. ``penalty(other_model)`` reads the weights from another module
with the same parameter names (for example a ``torch.compile`` d or DDP-wrapped one).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, Unpack

import torch
from torch import nn

from haloprune.core.errors import HaloPruneError
from haloprune.core.params import SELECTION_KEYS, Scope, SelectionArgs, require_parameters, unwrap
from haloprune.core.sharded import Layout, is_sharded, layout, local

__all__ = ["BudgetTerm", "ChecksParameterNames", "Penalty", "Scope", "SelectionArgs"]


def check_keywords(cls: type, given: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the valid keyword arguments of ``cls`` if ``given`` holds others than
    the selection keys (a typo such as ``lamda_min`` is never swallowed)."""
    unknown = sorted(set(given) - SELECTION_KEYS)
    if not unknown:
        return
    valid = sorted(valid_keywords(cls))
    key = unknown[0]
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise TypeError(
        f"{cls.__name__}() got an unexpected keyword argument {key!r}{hint}; valid: {', '.join(valid)}"
    )


def valid_keywords(cls: type) -> set[str]:
    """The keyword arguments a penalty class takes: its constructor's own, plus the selection keys."""
    params = inspect.signature(cls.__init__).parameters.values()
    own = {
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("self", "model")
    }
    return own | SELECTION_KEYS


class Penalty(nn.Module):
    """Base class: resolves and remembers the penalised parameters by dotted name.

    ``**selection`` (:class:`~haloprune.core.params.SelectionArgs`: ``scope``, ``include_bias``,
    ``include``, ``exclude``) says which parameters are penalised; any other keyword is a ``TypeError``.
    """

    #: True for penalties with learned parameters of their own (λ), which get their own optimizer group.
    learns: ClassVar[bool] = False
    #: The settings that give the penalty its strength: with one of them at 0 it cannot act (ξ scales
    #: every penalty's term on the weights; the HALO family's ψ is what holds λ back). See :meth:`cannot_act`.
    strengths: ClassVar[tuple[str, ...]] = ("xi",)
    #: A setting that stands in for the strengths (HALO's ``target_sparsity`` sets ξ and ψ itself).
    strengths_from: ClassVar[str | None] = None
    #: True for penalties that work on a model sharded with FSDP2 (``fully_shard``): their state is
    #: sharded like the weights and what they sum is summed over the processes (HALO).
    shards: ClassVar[bool] = False

    @classmethod
    def keyed_defaults(cls, optimizer: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Defaults that changed what a run with ``optimizer`` and these (given) ``settings`` does, with the
        value now in force (used with ``strengths_from``): a sweep job's key records them when not given,
        so a result of the old default in a store never stands for the new one
        (:meth:`~haloprune.methods.base.Method.job_params`). None here."""
        return {}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The constructor's keyword defaults: the one place each of the penalty's defaults is written
        (configs take theirs from here)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}

    @classmethod
    def check_options(cls, **settings: Any) -> None:
        """Raise ``ValueError`` for settings that cannot go together; one left out takes its default,
        keys the penalty does not take are ignored. The one place a penalty's rules are written: its
        constructor and configs both call it (none here; HALO has several)."""

    @classmethod
    def cannot_act(cls, settings: Mapping[str, Any]) -> str | None:
        """Why a penalty of this class with these settings (keyword arguments or a penalty config; one
        left out or ``None`` counts as 0) cannot act, as ``"with xi = 0 cannot act: give xi"``; ``None``
        if it can. The one rule for "no silent no-op": constructors (:meth:`check_acts`) and configs
        (:func:`haloprune.config.check_acts`) both refuse such a penalty."""
        if cls.strengths_from is not None and settings.get(cls.strengths_from) is not None:
            return None
        zero = [k for k in cls.strengths if not settings.get(k)]
        if not zero:
            return None
        unless = f" and no {cls.strengths_from}" if cls.strengths_from else ""
        give = " and ".join(cls.strengths) + (f", or {cls.strengths_from}" if cls.strengths_from else "")
        return f"with {' = '.join(zero)} = 0{unless} cannot act: give {give}"

    @classmethod
    def check_acts(cls, **settings: Any) -> None:
        """Raise ``ValueError`` if a penalty of this class with these settings cannot act
        (:meth:`cannot_act`)."""
        why = cls.cannot_act(settings)
        if why:
            raise ValueError(f"{cls.__name__} {why}")

    def __init__(self, model: nn.Module, **selection: Unpack[SelectionArgs]) -> None:
        check_keywords(type(self), dict(selection))
        super().__init__()
        model = unwrap(model)
        self.param_names: list[str] = require_parameters(model, "penalise", **selection)
        params = dict(model.named_parameters())
        chosen = [params[n] for n in self.param_names]
        #: How the penalised weights are spread over processes (FSDP2); ``Layout()``: whole here.
        self.layout: Layout = layout(chosen, self.param_names)
        # Sharded weights are held here, as the optimizer holds them: between forward and backward FSDP2
        # puts the unsharded weights of some modules in their place.
        self._sharded: list[torch.Tensor] | None = None
        if any(is_sharded(p) for p in chosen):
            if not type(self).shards:
                raise HaloPruneError(
                    f"{type(self).__name__} does not work on a model sharded with fully_shard (FSDP2) yet; "
                    "HALO does"
                )
            unsharded = [n for n, p in zip(self.param_names, chosen, strict=True) if not is_sharded(p)]
            if unsharded:
                raise HaloPruneError(
                    f"{unsharded[0]} is not sharded while other penalised weights are: apply fully_shard "
                    "to the root module too, so that every weight is sharded"
                )
            self._sharded = chosen
        # Shapes of the whole tensors, then shapes and sizes of this process's blocks (the same unsharded).
        self.full_shapes: list[tuple[int, ...]] = [tuple(p.shape) for p in chosen]
        self.shapes: list[tuple[int, ...]] = [tuple(local(p).shape) for p in chosen]
        self.numels: list[int] = [local(p).numel() for p in chosen]
        self.__dict__["_model"] = model  # a reference, not a submodule

    @property
    def num_penalized(self) -> int:
        """Number of penalised scalars (held by this process: its shards', for a sharded model)."""
        return sum(self.numels)

    def penalised_parameters(self, model: nn.Module | None = None) -> list[torch.Tensor]:
        """The penalised parameters of ``model`` (default: the model given at construction), as the
        optimizer holds them (``DTensor`` s for a sharded model)."""
        module = unwrap(model) if model is not None else self.__dict__["_model"]
        params = dict(module.named_parameters())
        try:
            tensors = [params[n] for n in self.param_names]
        except KeyError as err:
            raise ValueError(
                f"the model has no parameter {err.args[0]!r} that this penalty expects"
            ) from None
        if self._sharded is not None and model is None:
            # a weight not sharded now is FSDP2's unsharded view of the one held (between forward and
            # backward); a sharded one not held is a model sharded again: it is taken (its shape checked)
            tensors = [t if is_sharded(t) else held for t, held in zip(tensors, self._sharded, strict=True)]
            self._sharded = tensors
        elif self._sharded is None and any(is_sharded(t) for t in tensors):
            raise HaloPruneError(
                f"{type(self).__name__} was built before the model was sharded (fully_shard): build it "
                "after, so that its state is sharded like the weights"
            )
        for n, t, shape in zip(self.param_names, tensors, self.shapes, strict=True):
            if tuple(local(t).shape) != shape:
                raise ValueError(f"parameter {n!r} has shape {tuple(t.shape)}, the penalty expects {shape}")
        return tensors

    def weights(self, model: nn.Module | None = None) -> list[torch.Tensor]:
        """The penalised tensors of ``model`` (default: the model given at construction); for a sharded
        model, this process's blocks of them (differentiable views: gradients reach the parameters)."""
        return [local(t) for t in self.penalised_parameters(model)]

    @property
    def in_loss(self) -> bool:
        """True: add ``penalty()`` to the loss. False: it applies itself in ``optimizer.step()`` (fused)."""
        return True

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def project_(self) -> None:
        """Restore the constraints on the learned parameters after an optimizer step (no-op here)."""

    def attach(
        self, optimizer: torch.optim.Optimizer, *, total_steps: int | None = None, scheduler: Any = None
    ) -> Any:
        """Call :meth:`project_` after every ``optimizer.step()``. Returns the removable hook handle.

        ``total_steps``/``scheduler`` (the run's length and lr schedule) matter to penalties whose
        strength is given in step-budget units (target-sparsity HALO); the others ignore them."""
        return optimizer.register_step_post_hook(lambda *_: self.project_())

    def begin_training(self, step_budget: float) -> None:
        """Called once before training with ``B = Σ_t lr_t / (1 − momentum)``, the run's step budget
        (penalties whose strength is given in step-budget units need it; no-op here)."""

    def stats(self) -> dict[str, float]:
        """Scalars worth logging once per epoch (e.g. λ statistics)."""
        return {}


class ChecksParameterNames:
    """Mixin for penalties with their own state: the ``state_dict`` records which parameters it was built
    for, and loading it into a penalty built for other parameters is an error (not a silent mismatch)."""

    param_names: list[str]
    full_shapes: list[tuple[int, ...]]

    def get_extra_state(self) -> dict[str, Any]:
        return {"param_names": list(self.param_names), "shapes": [list(s) for s in self.full_shapes]}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        names, shapes = state["param_names"], [tuple(s) for s in state["shapes"]]
        if names != self.param_names or shapes != self.full_shapes:
            raise ValueError(
                f"this {type(self).__name__} state_dict was saved for a model with different penalised "
                "parameters"
            )


class BudgetTerm:
    """ψ's term of the HALO family on the learned scales: ``|Σ|λ| − p|`` (form ``"l1"``, the paper's
    default with ``p = 0``) or ``(Σ|λ| − p)²`` (form ``"l2"``)."""

    p: float
    form: str

    def _init_budget(self, p: float, form: str) -> None:
        if p < 0:
            raise ValueError(f"p must be >= 0, got {p}")
        if form not in ("l1", "l2"):
            raise ValueError(f"form must be 'l1' or 'l2', got {form!r}")
        self.p, self.form = float(p), form

    def budget_term(self, lam_abs_sum: torch.Tensor) -> torch.Tensor:
        d = lam_abs_sum - self.p
        return d.square() if self.form == "l2" else d.abs()
