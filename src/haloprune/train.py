"""The training loop: one function, config in, trained model + penalty + metrics out.

Per step: forward → task loss + penalty → backward → optimizer step → lr schedule → keep λ in range →
keep pruned weights at zero. Per epoch: evaluate on the validation split, log one line to
``metrics.jsonl``, write a checkpoint atomically.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import load_torch, load_verified, save_json, save_text, save_torch, save_verified
from .config import DataConfig, OptimConfig, PenaltyConfig, RunConfig, TrainConfig, to_toml
from .data import SplitData, iterate_batches, load_dataset
from .data.augment import CropFlip
from .data.datasets import get_spec
from .errors import ConfigError, HaloPruneError
from .masks import load_state_dict
from .models import MODELS, build_model
from .penalties import Penalty, build_penalty
from .selection import select_parameters

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

_BAR_SLOT: int | None = None  # in sweep workers: where the per-run bar sits under the sweep's bar


def set_bar_slot(slot: int | None) -> None:
    """Stack this process's per-run progress bars at ``slot`` (and drop the per-epoch lines)."""
    global _BAR_SLOT
    _BAR_SLOT = slot


class TrainingDiverged(HaloPruneError):
    """The loss or a parameter became NaN/inf."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class LRSchedule:
    """lr multiplier per optimizer step (a plain callable object, so the scheduler state is saveable)."""

    kind: str
    steps_per_epoch: int
    total_steps: int
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        if self.kind == "step":
            epoch = step // self.steps_per_epoch
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        return 1.0

    def step_budget(self, lr: float, momentum: float) -> float:
        """``B = Σ_t lr_t / (1 − momentum)`` over the whole run: how far SGD with momentum can move a
        parameter per unit of steady gradient. Penalties in step-budget units (target-sparsity HALO) use
        it."""
        return lr * sum(self(t) for t in range(self.total_steps)) / (1.0 - momentum)


def build_optimizer(
    model: nn.Module, penalty: Penalty | None, optim: OptimConfig, pen: PenaltyConfig
) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW (``optim.optimizer``); the penalty's own parameters (λ) get their
    own group (reference: same lr and weight decay as the weights)."""
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "name": "model"}]
    extra = list(penalty.parameters()) if penalty is not None else []
    if extra:
        wd = optim.weight_decay if pen.lambda_weight_decay is None else pen.lambda_weight_decay
        groups.append(
            {"params": extra, "name": "penalty", "lr": optim.lr * pen.lambda_lr_scale, "weight_decay": wd}
        )
    if optim.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay)
    return torch.optim.SGD(
        groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov, weight_decay=optim.weight_decay
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` on ``(x, y)``."""
    return evaluate_batches(model, iterate_batches(x, y, batch_size, shuffle=False, generator=None))


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, float]:
    """Mean loss (``loss_fn``, per example) and, for class logits, accuracy (%) over ``(x, y)`` batches."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    loss, correct, seen, classified = 0.0, 0, 0, True
    try:
        for xb, yb in batches:
            xb, yb = xb.to(device), yb.to(device)
            out = model(xb)
            loss += loss_fn(out, yb).item() * len(yb)
            seen += len(yb)
            if _is_classification(out, yb):
                correct += int((out.argmax(1) == yb).sum().item())
            else:
                classified = False
    finally:
        model.train(was_training)
    if seen == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    return {"loss": loss / seen, "accuracy": 100.0 * correct / seen if classified else float("nan")}


def _is_classification(out: torch.Tensor, y: torch.Tensor) -> bool:
    return out.dim() == 2 and y.dim() == 1 and not y.is_floating_point() and len(y) == len(out)


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def load_data(data: DataConfig, seed: int, device: torch.device | str = "cpu") -> SplitData:
    """The dataset a config section describes, split with ``seed``, as tensors on ``device``."""
    split = load_dataset(
        data.name,
        data.dir,
        val_size=data.val_size,
        seed=seed,
        train_subset=data.train_subset,
        test_subset=data.test_subset,
        pad_to=data.pad_to,
    )
    split.augment = data.augmented
    return split.to(device)


def train_batches(
    data: SplitData, batch_size: int, gen: torch.Generator, world: distributed.World
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """One epoch of training batches ``(xb, yb, global_batch_size)``, for this rank.

    The order (and, with ``data.augment``, each image's crop and flip) is drawn from ``gen`` for the
    whole global batch, so every rank draws the same numbers; each takes its slice (see
    :mod:`haloprune.distributed`). A trailing global batch too small to give each rank two images is
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


def prepare_run_dir(cfg: TrainConfig, *, reuse: bool = True, resume: bool = False) -> tuple[Path, bool]:
    """Create ``runs/<name>/`` with the resolved config; returns (dir, already_finished).

    Never destroys work: a directory holding a run with a *different* config is an error, and so is an
    unfinished run with checkpoints unless ``resume`` (or it would be started over). ``resume`` needs
    an existing run directory.
    """
    run_dir = cfg.run_dir
    config_file = run_dir / "config.toml"
    text = to_toml(cfg)
    if resume and not config_file.exists():
        raise HaloPruneError(f"nothing to resume: {run_dir} has no config.toml")
    if config_file.exists():
        if config_file.read_text() != text:
            raise ConfigError(
                f"{run_dir} holds a run with a different config; choose another name "
                f"(--set name=...) or out_dir, or delete it"
            )
        if reuse and (run_dir / "model.pt").exists():
            return run_dir, True
        if not resume and _has_checkpoint(run_dir):
            raise HaloPruneError(
                f"{run_dir} holds an unfinished run; continue it with `haloprune train --resume {run_dir}`, "
                "or choose another name"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
        if not resume:
            save_text(text, config_file)
    except OSError as err:
        raise HaloPruneError(f"cannot write the run directory {run_dir}: {err.strerror or err}") from None
    return run_dir, False


@dataclass
class TrainResult:
    model: nn.Module
    penalty: Penalty | None
    history: list[dict[str, Any]]
    run_dir: Path | None
    data: SplitData


def network_kwargs(run: RunConfig) -> dict[str, Any]:
    """The constructor arguments of the network ``run.model`` names, shaped for ``run.data``: input
    channels, image side (after ``data.pad_to``) and classes from the dataset, ``width`` from the model."""
    spec = get_spec(run.data.name)
    channels, side, _ = spec.image_shape
    kwargs: dict[str, Any] = {
        "in_channels": channels,
        "image_size": run.data.pad_to or side,
        "num_classes": spec.num_classes,
    }
    if run.model.width != 1.0:
        if "width" not in inspect.signature(MODELS[run.model.name]).parameters:
            raise ConfigError(f"model.width: {run.model.name} has no width multiplier (leave it at 1)")
        kwargs["width"] = run.model.width
    return kwargs


def build_network(run: RunConfig) -> nn.Module:
    """The (untrained) network a run config describes (see :func:`network_kwargs`)."""
    return build_model(run.model.name, **network_kwargs(run))


def build(cfg: TrainConfig, device: torch.device | str = "cpu") -> tuple[nn.Module, Penalty | None]:
    """The model and penalty a config describes, freshly initialised from ``cfg.seed``."""
    seed_everything(cfg.seed)
    model = build_network(cfg).to(device)
    penalty = None
    if cfg.penalty.name != "none":
        penalty = build_penalty(cfg.penalty.name, model, **cfg.penalty.kwargs()).to(device)
    return model, penalty


def load_trained(run_dir: str | Path, device: str = "cpu") -> tuple[TrainConfig, nn.Module, Penalty | None]:
    """The config, trained model and penalty saved in a finished run directory."""
    from .config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise HaloPruneError(f"{run_dir} is not a haloprune run directory (no config.toml)")
    cfg = load_config(TrainConfig, run_dir / "config.toml")
    if not (run_dir / "model.pt").is_file():
        raise HaloPruneError(f"{run_dir} has no model.pt: the run did not finish")
    state = load_torch(run_dir / "model.pt", map_location=device)
    model, penalty = build(cfg, device)

    load_state_dict(model, state["model"])
    if penalty is not None and state.get("penalty") is not None:
        penalty.load_state_dict(state["penalty"])
    return cfg, model, penalty


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

    Under ``torchrun`` (a process group set up by :func:`haloprune.distributed.setup`) the model is
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


def train(
    cfg: TrainConfig,
    *,
    data: SplitData | None = None,
    save: bool = True,
    progress: bool | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the model ``cfg`` describes. With ``save``, everything goes to ``cfg.run_dir``.

    ``resume`` continues an interrupted run from its last verified end-of-epoch checkpoint; the result is
    bit-identical to an uninterrupted run on CPU.

    Started by ``torchrun``, every rank trains its share of each global batch (see
    :mod:`haloprune.distributed`) and only rank 0 writes the run directory.
    """
    world, device = distributed.setup(cfg.device)
    run_dir = None
    if save:
        run_dir, finished = distributed.on_main(world, lambda: prepare_run_dir(cfg, resume=resume))
        if finished:
            _, model, penalty = load_trained(run_dir, str(device))
            history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            return TrainResult(
                model, penalty, history, run_dir, data or load_data(cfg.data, cfg.seed, device)
            )
    data = data if data is not None else load_data(cfg.data, cfg.seed, device)
    model, penalty = build(cfg, device)
    state, history = None, []
    if run_dir is not None and resume and _has_checkpoint(run_dir):
        state = load_verified(run_dir / "checkpoint.pt", map_location=device)
        load_state_dict(model, state["model"])
        if penalty is not None:
            penalty.load_state_dict(state["penalty"])
    if run_dir is not None:  # metrics written after the checkpoint we resume from are replayed
        lines = (
            (run_dir / "metrics.jsonl").read_text().splitlines()
            if (run_dir / "metrics.jsonl").exists()
            else []
        )
        history = [json.loads(line) for line in lines[: state["epoch"] if state else 0]]
        distributed.barrier(world)  # every rank has read it before rank 0 rewrites it
        if world.is_main:
            save_text("".join(json.dumps(r) + "\n" for r in history), run_dir / "metrics.jsonl")

    def checkpoint(epoch: int, row: dict[str, Any], st: dict[str, Any]) -> None:
        if run_dir is None or not world.is_main:
            return
        with (run_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        save_verified(
            _state(cfg, model, penalty, st["optimizer"], st["scheduler"], st["generator"], epoch, st["step"]),
            run_dir / "checkpoint.pt",
        )

    history += fit(
        model,
        data,
        cfg.optim,
        penalty=penalty,
        penalty_cfg=cfg.penalty,
        seed=cfg.seed,
        name=cfg.name,
        progress=progress,
        on_epoch=checkpoint,
        resume=state,
    )
    if run_dir is not None and world.is_main:
        final = {
            "model": model.state_dict(),
            "penalty": penalty.state_dict() if penalty is not None else None,
            "epoch": cfg.optim.epochs,
        }
        save_torch(final, run_dir / "model.pt")
        save_json(history[-1], run_dir / "final_metrics.json")
    distributed.barrier(world)  # the run is complete on disk when any rank returns
    return TrainResult(model, penalty, history, run_dir, data)


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / n).exists() for n in ("checkpoint.pt", "checkpoint.prev.pt"))


def _state(cfg, model, penalty, opt, sched, gen, epoch, step) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "penalty": penalty.state_dict() if penalty is not None else None,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "step": step,
    }
