"""The training loop, ``fit``: any model, the library's data or any iterable of batches, with or without a
penalty. Around the step, what a run also does (progress bar, NaN guard, metrics file, checkpoints) is in
:mod:`haloprune.training.callbacks`; data parallelism in :mod:`haloprune.training.distributed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from haloprune.config import OptimConfig, PenaltyConfig
from haloprune.core.params import select_parameters
from haloprune.core.sharded import layout, local, reshard, total_counts
from haloprune.data import SplitData
from haloprune.data.augment import CropFlip
from haloprune.penalties import Penalty
from haloprune.pruning.masks import load_state_dict
from haloprune.training import distributed
from haloprune.training.callbacks import (
    Callback,
    FitState,
    KeepBestTest,
    NaNGuard,
    ProgressBar,
    TrainingDiverged,
    set_bar_slot,
)
from haloprune.training.evaluate import (
    Batches,
    LossFn,
    _device_of,
    _is_classification,
    evaluate,
    evaluate_batches,
    targets_in,
)
from haloprune.training.optim import LRSchedule, build_optimizer

__all__ = ["TrainingDiverged", "fit", "set_bar_slot", "train_batches"]


def train_batches(
    data: SplitData, batch_size: int, gen: torch.Generator, world: distributed.World
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """One epoch of training batches ``(xb, yb, global_batch_size)``, for this rank.

    The order (and, with ``data.augment``, each image's crop and flip) is drawn from ``gen`` for the
    whole global batch, so every rank draws the same numbers; each takes its slice (see
    :mod:`haloprune.training.distributed`). A trailing global batch too small to give each rank two images is
    skipped in multi-process training (BatchNorm needs more than one value per channel).
    """
    x, y = data.x_train, data.y_train
    n = len(y)
    aug = CropFlip.for_dataset(*data.mean_std, x.shape[1]) if data.augment else None
    order = torch.randperm(n, generator=gen).to(x.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        params = aug.draw(len(idx), gen) if aug is not None else None
        if world.distributed:
            if len(idx) < 2 * world.size:
                continue
            part = distributed.shard(len(idx), world)
            idx, params = idx[part], params[part] if params is not None else None
        xb = x[idx]
        if aug is not None:
            xb = aug.apply(xb, params)
        yield xb, y[idx.to(y.device)], len(order[start : start + batch_size])


def _sync(device: torch.device) -> None:
    """Wait for the GPU, so a timing covers the work and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(
    model: nn.Module,
    data: SplitData | Batches,
    optim: OptimConfig | None = None,
    *,
    epochs: int | None = None,
    penalty: Penalty | None = None,
    penalty_cfg: PenaltyConfig | None = None,
    seed: int = 0,
    name: str = "run",
    progress: bool | None = None,
    extra_loss: Callable[[nn.Module, int], torch.Tensor] | None = None,
    resume: dict[str, Any] | str | Path | None = None,
    loss_fn: LossFn = F.cross_entropy,
    val_data: Batches | None = None,
    steps_per_epoch: int | None = None,
    callbacks: Sequence[Callback] = (),
) -> list[dict[str, Any]]:
    """Train ``model`` (and ``penalty``) in place for ``epochs`` (default ``optim.epochs``) epochs.

    ``data`` is a :class:`~haloprune.data.SplitData` (the library's datasets: batches drawn with a
    generator seeded by ``seed``, validation on its validation split) or **any re-iterable of ``(x, y)``
    batches** — a ``torch.utils.data.DataLoader``, a list — moved to the model's device as they come;
    ``val_data`` (the same kind) is then evaluated after each epoch, and ``steps_per_epoch`` is needed
    only if ``data`` has no ``len()``. ``loss_fn(output, y)`` is the task loss (default cross-entropy);
    accuracies are reported when outputs are class logits. ``optim`` defaults to ``OptimConfig()``
    (SGD, lr 0.1, momentum 0.9, cosine).

    Per step: forward → task loss (+ penalty if it goes in the loss, + ``extra_loss(model, step)``) →
    backward → optimizer step (an attached penalty applies itself there; masked weights stay zero) → lr
    schedule → callbacks' ``on_step_end``. Per epoch: evaluate, one metrics row, then callbacks'
    ``on_epoch_end``. ``callbacks`` (:mod:`haloprune.training.callbacks`: the one hook system) run after
    the NaN guard and the progress bar. Returns the metrics rows of the whole run.

    ``resume`` (a checkpoint written at the end of an epoch, :meth:`FitState.checkpoint`, e.g. by the
    :class:`~haloprune.training.callbacks.Checkpoint` callback) restores everything it holds — the model's
    weights and masks, the penalty (λ, its moments, target mode's controller), the optimizer, scheduler,
    batch generator and RNG states, the metrics rows so far — and continues with the next epoch, exactly
    as if never interrupted (``SplitData`` only). A model or penalty that is not the checkpoint's (other
    parameters or shapes, a penalty missing on one side) is refused with a ``ValueError``. For a sharded
    (FSDP2) model, ``resume`` is the folder of a sharded checkpoint
    (:class:`~haloprune.training.fsdp.ShardedCheckpoint`), loaded by every process.

    Under ``torchrun`` (a process group set up by :func:`haloprune.training.distributed.setup`) the model is
    trained data-parallel: ``optim.batch_size`` is the global batch, split across ranks; a model
    sharded with FSDP2 beforehand (:func:`~haloprune.training.distributed.shard_model`) is trained as it
    is. ``optim.amp`` runs forward and loss under bf16 autocast (parameters, gradients and HALO's update
    stay fp32); ``optim.channels_last`` (default: on CUDA) stores conv nets' activations and weights NHWC.
    """
    optim = optim if optim is not None else OptimConfig()
    epochs = optim.epochs if epochs is None else epochs
    device, world, own_data = _device_of(model), distributed.world(), isinstance(data, SplitData)
    if own_data:
        steps_per_epoch = optim.steps_per_epoch(len(data.y_train))
    else:
        steps_per_epoch = _steps_per_epoch(data, steps_per_epoch, epochs)
        if resume is not None:
            raise ValueError("resume needs the library's SplitData (the batch order of your data is yours)")
    channels_last = _channels_last(model, device, optim)
    net = distributed.wrap(model, device, world)
    state = _start(model, penalty, optim, penalty_cfg, seed, name, epochs, steps_per_epoch, resume)
    hooks: list[Callback] = [NaNGuard(), ProgressBar(progress if world.is_main else False)]
    if optim.keep == "best-test":
        if not own_data:
            raise ValueError(
                'optim.keep = "best-test" needs the library\'s SplitData (it evaluates the test split)'
            )
        hooks.append(KeepBestTest(data.x_test, data.y_test, optim.eval_batch_size))
    hooks += callbacks
    prunable = select_parameters(model, **(penalty_cfg.selection() if penalty_cfg is not None else {}))
    step = _Step(net, loss_fn, extra_loss, optim.amp == "bf16", channels_last, world, own_data, hooks)
    for epoch in range(state.epoch + 1, epochs + 1):
        state.epoch = epoch
        model.train()
        t0 = time.perf_counter()
        state.sums, state.classified = torch.zeros(3, device=device), True  # task loss x n, correct, n
        for cb in hooks:
            cb.on_epoch_start(state)
        if own_data:
            batches: Iterable = train_batches(data, optim.batch_size, state.generator, world)
        else:
            batches = ((xb.to(device), yb.to(device), len(yb)) for xb, yb in data)
        for xb, yb, n_global in batches:
            step(state, xb, yb, n_global)
        _sync(device)
        seconds = time.perf_counter() - t0
        distributed.end_epoch(state.sums, model, world)
        val = _validate(model, data if own_data else val_data, optim, loss_fn)
        reshard(model)  # FSDP2: the parameters the optimizer holds, for what reads them now
        row = _epoch_row(state, prunable, val, seconds)
        state.history.append(row)
        for cb in hooks:
            cb.on_epoch_end(state, row)
    for cb in hooks:
        cb.on_fit_end(state)
    return state.history


@dataclass(frozen=True)
class _Step:
    """One training step, with what is fixed for the run: forward (bf16 autocast if ``amp``) → task loss
    (+ the penalty if it goes in the loss, + ``extra_loss``) → backward → ``optimizer.step()`` (an
    attached penalty applies itself there; masked weights stay zero) → lr schedule → the epoch's sums →
    callbacks' ``on_step_end``."""

    net: nn.Module  # the model, or its DDP wrapper
    loss_fn: LossFn
    extra_loss: Callable[[nn.Module, int], torch.Tensor] | None
    amp: bool
    channels_last: bool
    world: distributed.World
    own_data: bool  # the library's SplitData: ranks share each global batch
    hooks: Sequence[Callback]

    def __call__(self, state: FitState, xb: torch.Tensor, yb: torch.Tensor, n_global: int) -> None:
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(xb)
            ce = self.loss_fn(out, yb)
        # across ranks DDP averages gradients: weight each rank's mean by its share of the global batch
        world, penalty = self.world, state.penalty
        task = ce * (len(yb) * world.size / n_global) if world.distributed and self.own_data else ce
        loss = task + penalty() if penalty is not None and penalty.in_loss else task
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(state.model, state.step)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()  # an attached penalty applies itself here; masked weights stay zero
        state.scheduler.step()
        state.step += 1
        state.loss = loss.detach()
        _tally(state, out, yb, ce)
        for cb in self.hooks:
            cb.on_step_end(state)


def _channels_last(model: nn.Module, device: torch.device, optim: OptimConfig) -> bool:
    """Store a conv net's weights NHWC (``optim.channels_last``; default: on CUDA); in place."""
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    on = conv and (device.type == "cuda" if optim.channels_last is None else optim.channels_last)
    if on:
        model.to(memory_format=torch.channels_last)  # the same Parameter objects
    return on


def _start(
    model: nn.Module,
    penalty: Penalty | None,
    optim: OptimConfig,
    penalty_cfg: PenaltyConfig | None,
    seed: int,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    resume: dict[str, Any] | str | Path | None,
) -> FitState:
    """Optimizer, lr schedule (the penalty attached to both) and batch generator, at step 0 or, with the
    model and penalty, where ``resume`` left off."""
    if resume is not None and not isinstance(resume, (str, Path)):
        _restore(model, penalty, resume)
    opt = build_optimizer(model, penalty, optim, penalty_cfg or PenaltyConfig())
    total = steps_per_epoch * epochs
    schedule = LRSchedule.of(optim, steps_per_epoch, total)
    # one multiplier per parameter group: the weights', then (if the penalty learns λ) λ's
    lam = schedule.for_lambda(penalty_cfg or PenaltyConfig())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [schedule, lam][: len(opt.param_groups)])
    if penalty is not None:
        penalty.attach(opt, total_steps=total, scheduler=sched)
    gen = torch.Generator().manual_seed(seed)
    state = FitState(model, opt, sched, gen, penalty, name, epochs, steps_per_epoch)
    if isinstance(resume, (str, Path)):  # a sharded checkpoint: every process loads its part
        from haloprune.training.fsdp import load_progress

        state.restore_progress(load_progress(resume, model, opt, penalty))
    elif resume is not None:
        opt.load_state_dict(resume["optimizer"])
        state.restore_progress(resume)
    return state


def _restore(model: nn.Module, penalty: Penalty | None, resume: dict[str, Any]) -> None:
    """The model (weights and masks) and penalty of a checkpoint, or a ``ValueError`` saying why they are
    not this checkpoint's."""
    saved_penalty = resume.get("penalty")
    if (penalty is None) != (saved_penalty is None):
        ours = "the fit has no penalty" if penalty is None else "the checkpoint has no penalty state"
        raise ValueError(f"resume: {ours} (a penalty on one side only)")
    try:
        load_state_dict(model, resume["model"], restore=False)
        if penalty is not None:
            penalty.load_state_dict(saved_penalty)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"resume: the model or penalty is not the checkpoint's ({first})") from None


def _tally(state: FitState, out: torch.Tensor, yb: torch.Tensor, ce: torch.Tensor) -> None:
    """Add one batch to the epoch's sums, on the device (no sync): per example, or per position for
    per-position class logits (:func:`~haloprune.training.evaluate.targets_in`)."""
    with torch.no_grad():
        n = torch.tensor(float(targets_in(out, yb)), device=out.device)
        if _is_classification(out, yb):
            hits = (out.argmax(1) == yb).sum().float()
        else:
            hits, state.classified = torch.zeros((), device=out.device), False
        state.sums += torch.stack([ce.detach().float() * n, hits, n])


def _validate(model: nn.Module, data: Any, optim: OptimConfig, loss_fn: LossFn) -> dict[str, float]:
    if isinstance(data, SplitData):
        return evaluate(model, data.x_val, data.y_val, optim.eval_batch_size)
    if data is not None:
        return evaluate_batches(model, data, loss_fn)
    return {"loss": float("nan"), "accuracy": float("nan")}


def _epoch_row(state: FitState, prunable: list[str], val: dict[str, float], seconds: float) -> dict[str, Any]:
    """One epoch's metrics row (training sums already reduced across ranks)."""
    ce_sum, correct, seen = state.sums.tolist()
    if seen == 0:
        raise ValueError(f"epoch {state.epoch} had no training batches: the data is empty or exhausted")
    model, penalty = state.model, state.penalty
    with torch.no_grad():
        pen_end = penalty().item() if penalty is not None else 0.0
    small = _share_below(model, prunable, 1e-3)
    row = {
        "epoch": state.epoch,
        "step": state.step,
        "lr": state.optimizer.param_groups[0]["lr"],
        "train_ce": ce_sum / seen,
        "penalty_end_of_epoch": pen_end,
        "train_accuracy": 100 * correct / seen if state.classified else float("nan"),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "frac_weights_below_1e-3": small,
        "seconds": seconds,
        "images_per_s": seen / seconds,  # examples, or positions for per-position targets (bytes)
    }
    if penalty is not None:
        row.update(penalty.stats())
    return row


@torch.no_grad()
def _share_below(model: nn.Module, names: list[str], bound: float) -> float:
    """The share of the weights ``names`` below ``bound`` in magnitude (over all processes' shards)."""
    params = [model.get_parameter(n) for n in names]
    if not params:
        return 0.0
    where = layout(params, names)
    below = sum(int((local(p).abs() < bound).sum()) for p in params if where.counts(p))
    (below,) = total_counts([below], where, local(params[0]).device)
    return below / sum(p.numel() for p in params)


def _steps_per_epoch(data: Any, given: int | None, epochs: int) -> int:
    """Batches per epoch of a user's iterable (its ``len``, else ``given``); it must be re-iterable."""
    if isinstance(data, Iterator) and epochs > 1:
        raise ValueError(
            "data is an iterator, which is exhausted after one epoch: give a DataLoader or a list of batches"
        )
    if given is not None:
        if given <= 0:
            raise ValueError(f"steps_per_epoch must be > 0, got {given}")
        return given
    try:
        n = len(data)
    except TypeError:
        raise ValueError("data has no len(): give steps_per_epoch=") from None
    if n == 0:
        raise ValueError("data has no batches")
    return n
