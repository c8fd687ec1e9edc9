"""What every framework integration does with HALO, whatever calls it: :class:`HALOSession`.

A framework callback creates one at construction (so a typo or a missing argument fails then, not at the
first step), calls :meth:`~HALOSession.start` when the model and its optimizer exist, logs
:meth:`~HALOSession.stats`, puts :meth:`~HALOSession.state_dict` in its checkpoints and hands it back with
:meth:`~HALOSession.load_state_dict` (before or after ``start``: it is applied once HALO exists), and
calls :meth:`~HALOSession.finish` when training ends.

The state holds the model's masks too (a model pruned before this run, or by a fit that ended earlier):
the frameworks' checkpoints hold the model's plain ``state_dict`` (zeros, no masks; see
:mod:`haloprune.pruning.masks`), and a run resumed from one gets its masks back from the session's state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from haloprune.core.params import SELECTION_KEYS
from haloprune.core.sharded import gathered, gathered_state
from haloprune.penalties.base import check_keywords
from haloprune.penalties.halo import HALO
from haloprune.pruning.magnitude import global_magnitude_prune
from haloprune.pruning.masks import attach_masks, get_masks


class HALOSession:
    """HALO on one model and optimizer for one run.

    ``target_sparsity`` (target mode: ξ and ψ steered to leave that fraction of exact zeros) or ``xi``
    and ``psi``; any other :class:`~haloprune.HALO` keyword in ``halo_kwargs`` (``psi_hat``,
    ``lambda_dtype``, ``exclude=["head.*"]``, ...; an unknown one is a ``TypeError`` naming the valid
    ones). ``prune_at_end``: when training ends, prune globally by magnitude to ``prune_sparsity``
    (default: ``target_sparsity``) over the same parameters HALO penalised; the masks hold through any
    later optimizer step, ``state_dict`` and ``torch.compile``.
    """

    def __init__(
        self,
        target_sparsity: float | None = None,
        xi: float | None = None,
        psi: float | None = None,
        *,
        prune_at_end: bool = True,
        prune_sparsity: float | None = None,
        **halo_kwargs: Any,
    ) -> None:
        check_keywords(HALO, halo_kwargs)
        for key in ("model", "step_budget", "fused"):
            if key in halo_kwargs:
                raise TypeError(f"{key}= is set by the integration, not passed to it")
        if target_sparsity is None and (xi is None or psi is None):
            raise ValueError("give target_sparsity, or xi and psi")
        if target_sparsity is not None and (xi is not None or psi is not None):
            raise ValueError("target_sparsity sets xi and psi itself: give one or the other")
        if target_sparsity is not None and not 0.0 < target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in (0, 1), got {target_sparsity}")
        HALO.check_acts(xi=xi, psi=psi, target_sparsity=target_sparsity)  # xi = 0 trains nothing: refused now
        prune_sparsity = target_sparsity if prune_sparsity is None else prune_sparsity
        if prune_at_end and prune_sparsity is None:
            raise ValueError("prune_at_end with xi and psi needs prune_sparsity (the fraction to prune)")
        if prune_sparsity is not None and not 0.0 <= prune_sparsity < 1.0:
            raise ValueError(f"prune_sparsity must be in [0, 1), got {prune_sparsity}")
        self.target_sparsity, self.xi, self.psi = target_sparsity, xi, psi
        self.prune_at_end, self.prune_sparsity = prune_at_end, prune_sparsity
        self.halo_kwargs = halo_kwargs
        self.halo: HALO | None = None
        self._pending: dict[str, Any] | None = None
        self._handle: Any = None
        self._model: nn.Module | None = None
        self._pending_masks: dict[str, torch.Tensor] | None = None
        self.masks: dict[str, torch.Tensor] | None = None

    @property
    def selection(self) -> dict[str, Any]:
        """The parameters HALO penalises (and ``finish`` prunes): the selection keywords given."""
        return {k: v for k, v in self.halo_kwargs.items() if k in SELECTION_KEYS}

    def start(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int | None,
        scheduler: Any = None,
        scheduler_every: int = 1,
    ) -> HALO:
        """Build HALO on ``model`` (once; a second fit of the same session continues it) and attach it to
        ``optimizer``; ``total_steps`` optimizer steps in the whole run, ``scheduler`` stepped once per
        ``scheduler_every`` of them, give target mode its step budget. Saved state is applied after."""
        if self.target_sparsity is not None and total_steps is None:
            raise ValueError(
                "target_sparsity needs the run's length: give the trainer max_epochs or max_steps"
            )
        self._model = model
        if self._pending_masks is not None:
            attach_masks(model, self._pending_masks)
            self._pending_masks = None
        if self.halo is None:
            kwargs = dict(self.halo_kwargs)
            if self.target_sparsity is not None:
                kwargs["target_sparsity"] = self.target_sparsity
            else:
                kwargs.update(xi=self.xi, psi=self.psi)
            self.halo = HALO(model, **kwargs)
        if self._handle is not None:
            self._handle.remove()
        if self.target_sparsity is None:
            total_steps, scheduler = None, None
        self._handle = self.halo.attach(
            optimizer, total_steps=total_steps, scheduler=scheduler, scheduler_every=scheduler_every
        )
        if self._pending is not None:
            self.halo.load_state_dict(self._pending)
            self._pending = None
        return self.halo

    def stats(self, prefix: str = "halo/") -> dict[str, float]:
        """λ's quantiles and the share at its floor; in target mode ξ, ψ, c·B, the density of nonzero
        weights and the target density at this point of the run."""
        if self.halo is None:
            return {}
        return {prefix + k: v for k, v in self.halo.stats().items()}

    def state_dict(self) -> dict[str, Any]:
        """HALO's state (λ, its moments, the controller) and the model's masks: what a checkpoint needs to
        resume exactly."""
        state: dict[str, Any] = {}
        if self.halo is not None:  # a sharded model's λ and masks gathered whole (a collective call):
            # trainers save callback state from one process (Lightning's FSDP2 strategy too)
            state["halo"] = gathered_state(self.halo.state_dict())
        elif self._pending is not None:
            state["halo"] = self._pending
        masks = get_masks(self._model) if self._model is not None else self._pending_masks
        if masks:
            state["masks"] = {name: gathered(mask).cpu() for name, mask in masks.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        masks = state.get("masks")
        if masks:
            if self._model is not None:
                attach_masks(self._model, masks)
            else:
                self._pending_masks = masks
        saved = state.get("halo")
        if saved is None:
            return
        if self.halo is not None:
            self.halo.load_state_dict(saved)
        else:
            self._pending = saved

    def finish(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Detach HALO from the optimizer and, with ``prune_at_end``, prune ``model`` (in place); returns
        the masks."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.prune_at_end and self.halo is not None:
            assert self.prune_sparsity is not None
            self.masks = global_magnitude_prune(model, self.prune_sparsity, **self.selection)
        return self.masks
