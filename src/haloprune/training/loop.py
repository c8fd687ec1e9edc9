"""The training loop: one function, config in, trained model + penalty + metrics out.

Per step: forward → task loss + penalty → backward → optimizer step → lr schedule → keep λ in range →
keep pruned weights at zero. Per epoch: evaluate on the validation split, log one line to
``metrics.jsonl``, write a checkpoint atomically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from haloprune.config import OptimConfig, PenaltyConfig
from haloprune.core.errors import HaloPruneError
from haloprune.core.params import select_parameters
from haloprune.data import SplitData
from haloprune.data.augment import CropFlip
from haloprune.penalties import Penalty
from haloprune.training import distributed
from haloprune.training.evaluate import (
    Batches,
    LossFn,
    _device_of,
    _is_classification,
    evaluate,
    evaluate_batches,
)
from haloprune.training.optim import LRSchedule, build_optimizer

_BAR_SLOT: int | None = None  # in sweep workers: where the per-run bar sits under the sweep's bar


def set_bar_slot(slot: int | None) -> None:
    """Stack this process's per-run progress bars at ``slot`` (and drop the per-epoch lines)."""
    global _BAR_SLOT
    _BAR_SLOT = slot


class TrainingDiverged(HaloPruneError):
    """The loss or a parameter became NaN/inf."""


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
    aug = CropFlip.for_dataset(data.spec.mean, data.spec.std, x.shape[1]) if data.augment else None
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


def _check_finite(step: int, loss: torch.Tensor, model: nn.Module, penalty: Penalty | None) -> None:
    if torch.isfinite(loss):
        return
    named = list(model.named_parameters()) + (
        [(f"penalty.{n}", p) for n, p in penalty.named_parameters()] if penalty is not None else []
    )
    bad = [n for n, p in named if not torch.isfinite(p).all()]
    where = f"; non-finite parameters: {', '.join(bad[:5])}" if bad else ""
    raise TrainingDiverged(f"loss became {loss.item()} at step {step}{where}; lower the lr, xi or psi")


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
    on_step: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, dict[str, Any], dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    val_data: Batches | None = None,
    steps_per_epoch: int | None = None,
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
    schedule → ``on_step(step)``. Per epoch: evaluate, one metrics row, then ``on_epoch(epoch, row,
    state)`` where ``state`` holds the optimizer, scheduler and generator (for checkpoints). Returns the
    metrics rows. ``resume`` (a checkpoint written at the end of an epoch) restores the optimizer,
    scheduler, batch generator and RNG states and continues with the next epoch, exactly as if never
    interrupted (``SplitData`` only).

    Under ``torchrun`` (a process group set up by :func:`haloprune.training.distributed.setup`) the model is
    trained data-parallel: ``optim.batch_size`` is the global batch, split across ranks. ``optim.amp``
    runs forward and loss under bf16 autocast (parameters, gradients and HALO's update stay fp32);
    ``optim.channels_last`` (default: on CUDA) stores conv nets' activations and weights NHWC.
    """
    optim = optim if optim is not None else OptimConfig()
    device = _device_of(model)
    epochs = optim.epochs if epochs is None else epochs
    world = distributed.world()
    own_data = isinstance(data, SplitData)
    if own_data:
        steps_per_epoch = math.ceil(len(data.y_train) / optim.batch_size)  # global batches
    else:
        steps_per_epoch = _steps_per_epoch(data, steps_per_epoch, epochs)
        if resume is not None:
            raise ValueError("resume needs the library's SplitData (the batch order of your data is yours)")
    conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    channels_last = conv and (device.type == "cuda" if optim.channels_last is None else optim.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place: the same Parameter objects
    net = distributed.wrap(model, device, world)
    amp = optim.amp == "bf16"
    if not world.is_main:
        progress = False
    opt = build_optimizer(model, penalty, optim, penalty_cfg or PenaltyConfig())
    schedule = LRSchedule(
        optim.schedule, steps_per_epoch, steps_per_epoch * epochs, list(optim.milestones), optim.gamma
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    if penalty is not None:
        penalty.attach(opt, total_steps=steps_per_epoch * epochs, scheduler=sched)
    gen = torch.Generator().manual_seed(seed)
    selection = penalty_cfg.selection() if penalty_cfg is not None else {}
    prunable = select_parameters(model, **selection)
    history: list[dict[str, Any]] = []
    step, first_epoch = 0, 1
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        step, first_epoch = int(resume["step"]), int(resume["epoch"]) + 1
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, device=device)  # loss, correct, seen
        classified = True
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"{name} {epoch}/{epochs}",
            leave=False,
            disable=None if progress is None else not progress,
            unit="batch",
            position=_BAR_SLOT,
        )
        batches = (
            train_batches(data, optim.batch_size, gen, world)
            if own_data
            else ((xb.to(device), yb.to(device), len(yb)) for xb, yb in data)
        )
        for xb, yb, n_global in batches:
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = net(xb)
                ce = loss_fn(out, yb)
            # across ranks DDP averages gradients: weight each rank's mean by its share of the global batch
            task = ce * (len(yb) * world.size / n_global) if world.distributed and own_data else ce
            loss = task + penalty() if penalty is not None and penalty.in_loss else task
            if extra_loss is not None:
                loss = loss + extra_loss(model, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()  # an attached penalty applies itself here; masked weights are kept at zero
            sched.step()
            step += 1
            if on_step is not None:
                on_step(step)
            with torch.no_grad():
                batch = torch.tensor(float(len(yb)), device=device)
                if _is_classification(out, yb):
                    hits = (out.argmax(1) == yb).sum().float()
                else:
                    hits, classified = torch.zeros((), device=device), False
                sums += torch.stack([ce.detach().float() * batch, hits, batch])
            if step % 50 == 0 or step % steps_per_epoch == 0:
                _check_finite(step, loss.detach(), model, penalty)
                shown = f"{100 * sums[1].item() / sums[2].item():.1f}" if classified else "-"
                bar.set_postfix(loss=f"{loss.item():.4f}", acc=shown)
            bar.update()
        bar.close()
        _sync(device)
        seconds = time.perf_counter() - t0
        if world.distributed:
            torch.distributed.all_reduce(sums)
            distributed.broadcast_buffers(model, world)  # one set of BatchNorm statistics
        ce_sum, correct, seen = sums.tolist()
        if seen == 0:
            raise ValueError(f"epoch {epoch} had no training batches: the data is empty or exhausted")
        with torch.no_grad():
            w = torch.cat(
                [model.get_parameter(n).detach().abs().flatten() for n in prunable] or [torch.ones(1)]
            )
            pen_end = penalty().item() if penalty is not None else 0.0
        if own_data:
            val = evaluate(model, data.x_val, data.y_val, optim.eval_batch_size)
        elif val_data is not None:
            val = evaluate_batches(model, val_data, loss_fn)
        else:
            val = {"loss": float("nan"), "accuracy": float("nan")}
        row = {
            "epoch": epoch,
            "step": step,
            "lr": opt.param_groups[0]["lr"],
            "train_ce": ce_sum / seen,
            "penalty_end_of_epoch": pen_end,
            "train_accuracy": 100 * correct / seen if classified else float("nan"),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "frac_weights_below_1e-3": (w < 1e-3).float().mean().item(),
            "seconds": seconds,
            "images_per_s": seen / seconds,
        }
        if penalty is not None:
            row.update(penalty.stats())
        history.append(row)
        if progress is True or (progress is None and _BAR_SLOT is None):
            tqdm.write(
                f"[{name}] epoch {epoch}/{epochs}  loss {row['train_ce']:.4f}  "
                f"train {row['train_accuracy']:.2f}%  val {row['val_accuracy']:.2f}%  "
                f"|w|<1e-3: {100 * row['frac_weights_below_1e-3']:.1f}%  {seconds:.1f}s"
            )
        if on_epoch is not None:
            on_epoch(epoch, row, {"optimizer": opt, "scheduler": sched, "generator": gen, "step": step})
    return history


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
