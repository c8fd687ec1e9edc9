"""HALO in PyTorch Lightning: :class:`HALOCallback` (``pip install 'haloprune[lightning]'``).

::

    import lightning as L
    from haloprune.integrations.lightning import HALOCallback

    trainer = L.Trainer(max_epochs=20, callbacks=[HALOCallback(target_sparsity=0.95)])
    trainer.fit(module, train_loader)   # the module's own training_step and configure_optimizers
    # the module is now pruned to 95% (masks that hold); halo statistics went to the trainer's logger

At fit start the callback builds HALO on the ``LightningModule`` and attaches it to the optimizer that
holds the penalised weights (``torch.optim`` SGD, Adam or AdamW): HALO runs inside ``optimizer.step()``,
the module's loss stays the task loss, and Lightning's closure, gradient clipping and accumulation work
as usual. Target mode's step budget comes from ``trainer.estimated_stepping_batches`` and the
optimizer's scheduler (per-step or per-epoch). λ and the controller are saved in Lightning checkpoints
(the callback's ``state_dict``) and restored by ``trainer.fit(..., ckpt_path=...)``, so a resumed run ends
as the uninterrupted one would. Under DDP every rank steps the same λ on the same all-reduced gradients.
The model's masks are in the callback's state too: a pruned module resumed from a checkpoint gets them
back. A checkpoint's model state is plain (zeros, no masks): it loads into a fresh module with plain
``load_state_dict``, and :func:`haloprune.load_state_dict` re-attaches the masks from the zeros.
"""

from __future__ import annotations

import math
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "haloprune.integrations.lightning needs PyTorch Lightning: pip install 'haloprune[lightning]'"
    ) from err

from haloprune.core.params import select_parameters
from haloprune.integrations.session import HALOSession

__all__ = ["HALOCallback"]


class HALOCallback(pl.Callback):
    """HALO for a Lightning fit: ``target_sparsity`` (or ``xi`` and ``psi``), pruned at the end.

    Arguments are :class:`~haloprune.integrations.session.HALOSession`'s: ``prune_at_end`` (default
    True) prunes the module globally by magnitude to ``prune_sparsity`` (default: the target) when
    training ends; any other keyword goes to :class:`~haloprune.HALO` (``psi_hat``, ``lambda_dtype``,
    ``exclude=["head.*"]``, ...). ``log_every_n_steps`` (default: the trainer's) sets how often HALO's
    statistics (``halo/lambda_median``, ``halo/density``, ``halo/xi``, ...) are logged.
    """

    def __init__(
        self,
        target_sparsity: float | None = None,
        xi: float | None = None,
        psi: float | None = None,
        *,
        log_every_n_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.session = HALOSession(target_sparsity, xi, psi, **kwargs)
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps

    @property
    def halo(self) -> Any:
        """The :class:`~haloprune.HALO` penalty (``None`` before fit starts)."""
        return self.session.halo

    @property
    def state_key(self) -> str:
        return self._generate_state_key(target_sparsity=self.session.target_sparsity)

    # ----------------------------------------------------------------------------- hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = _optimizer_of(trainer, pl_module, self.session.selection)
        total = trainer.estimated_stepping_batches
        total_steps = None if math.isinf(total) else int(total)
        scheduler, every = _scheduler_of(trainer, optimizer)
        if scheduler is not None and total_steps is None:
            scheduler = None
        self.session.start(pl_module, optimizer, total_steps, scheduler, every)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps
        if trainer.global_step % every == 0:
            pl_module.log_dict(self.session.stats(), on_step=True, on_epoch=False, rank_zero_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.finish(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return self.session.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.session.load_state_dict(state_dict)


def _optimizer_of(trainer: pl.Trainer, module: torch.nn.Module, selection: dict[str, Any]) -> Any:
    """The trainer's optimizer that holds the first parameter HALO will penalise."""
    names = select_parameters(module, **selection)
    if not names or not trainer.optimizers:
        raise ValueError("HALOCallback: the module has no optimizer or nothing to penalise")
    first = dict(module.named_parameters())[names[0]]
    for opt in trainer.optimizers:
        if any(p is first for g in opt.param_groups for p in g["params"]):
            return opt
    raise ValueError(f"HALOCallback: no optimizer of configure_optimizers() holds {names[0]!r}")


def _scheduler_of(trainer: pl.Trainer, optimizer: Any) -> tuple[Any, int]:
    """The scheduler of ``optimizer`` and the optimizer steps per scheduler step (``interval`` and
    ``frequency`` of its Lightning config)."""
    for config in trainer.lr_scheduler_configs:
        if getattr(config.scheduler, "optimizer", None) is optimizer:
            if config.interval == "step":
                return config.scheduler, config.frequency
            if math.isinf(trainer.num_training_batches):
                raise ValueError(
                    "HALOCallback: a scheduler stepped per epoch over batches of unknown number: step it "
                    "per step (interval='step') or give the dataloader a length"
                )
            per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
            return config.scheduler, per_epoch * config.frequency
    return None, 1
