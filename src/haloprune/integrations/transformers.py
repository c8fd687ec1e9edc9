"""HALO in the Hugging Face ``Trainer``: :class:`HALOTrainerCallback` (``pip install 'haloprune[hf]'``).

::

    from transformers import Trainer, TrainingArguments
    from haloprune.integrations.transformers import HALOTrainerCallback

    halo = HALOTrainerCallback(target_sparsity=0.9)
    trainer = Trainer(model=model, args=TrainingArguments("out", num_train_epochs=10), train_dataset=ds,
                      callbacks=[halo])
    trainer.train()          # AdamW by default; the model ends pruned to 90% (masks that hold)

At the start of training the callback builds HALO on the model and attaches it to the Trainer's optimizer
(``torch.optim`` SGD, Adam or AdamW, also behind accelerate's wrapper), with target mode's step budget
from ``max_steps`` and the Trainer's scheduler (it covers ``num_train_epochs`` too): HALO runs inside
``optimizer.step()``, after the Trainer's gradient clipping. Its statistics (``halo/density``,
``halo/lambda_median``, ...) are added to every training log — ``trainer.state.log_history`` and the
loggers of ``report_to``, which see them when the callback comes before them:
``trainer.callback_handler.callbacks.insert(0, halo)`` instead of ``callbacks=[halo]``. λ and the
controller (and the model's masks) are saved as ``halo.pt`` in every ``checkpoint-N`` folder and read
back by ``trainer.train(resume_from_checkpoint=...)``. A pruned model's ``state_dict`` / ``save_pretrained``
folder is a plain one (zeros, no masks): :func:`haloprune.restore_masks` or
:func:`haloprune.load_state_dict` re-attach the masks from its zeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as err:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "haloprune.integrations.transformers needs Hugging Face transformers: pip install 'haloprune[hf]'"
    ) from err

from haloprune.integrations.session import HALOSession

__all__ = ["HALOTrainerCallback"]

STATE_FILE = "halo.pt"


class HALOTrainerCallback(TrainerCallback):
    """HALO for a ``transformers.Trainer`` run: ``target_sparsity`` (or ``xi`` and ``psi``), pruned at the
    end. Arguments as :class:`~haloprune.integrations.session.HALOSession`'s (``prune_at_end``,
    ``prune_sparsity``, and any :class:`~haloprune.HALO` keyword); ``resume_from``: a checkpoint folder to
    read ``halo.pt`` from when the Trainer resumes (default: ``<output_dir>/checkpoint-<step>``)."""

    def __init__(
        self,
        target_sparsity: float | None = None,
        xi: float | None = None,
        psi: float | None = None,
        *,
        resume_from: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        self.session = HALOSession(target_sparsity, xi, psi, **kwargs)
        self.resume_from = Path(resume_from) if resume_from is not None else None

    @property
    def halo(self) -> Any:
        """The :class:`~haloprune.HALO` penalty (``None`` before training starts)."""
        return self.session.halo

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model, optimizer = kwargs["model"], kwargs["optimizer"]
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
        scheduler = kwargs.get("lr_scheduler")
        scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
        # the Trainer has already restored the optimizer and scheduler of a resumed run: what is left
        remaining = state.max_steps - state.global_step
        self.session.start(model, optimizer, remaining if remaining > 0 else None, scheduler)
        if state.global_step > 0:
            self.session.load_state_dict(_read_state(self._checkpoint_dir(args, state)))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
    ) -> None:
        if logs is None or any(k.startswith("eval_") for k in logs):
            return
        stats = self.session.stats()
        logs.update(stats)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(stats)

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        saved = self.session.state_dict()  # every process: a sharded model's λ is gathered (collective)
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                torch.save(saved, folder / STATE_FILE)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session.finish(kwargs["model"])

    def _checkpoint_dir(self, args: Any, state: Any) -> Path:
        if self.resume_from is not None:
            return self.resume_from
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"resuming HALO needs {path} (written beside the Trainer's checkpoint by HALOTrainerCallback); "
            "give HALOTrainerCallback(resume_from=<checkpoint folder>)"
        )
    return torch.load(path, map_location="cpu", weights_only=True)
