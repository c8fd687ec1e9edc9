"""HALO's fast path: what the fused optimizer steps share.

The reference formulation adds ``ξ Σ|w|/λ² + ψ|Σ|λ| − p|`` to the loss and lets autograd and the
optimizer do the rest: about ten extra passes over memory per step, which doubles the step time of a small
network. The fused steps apply the analytic gradients

    ∂/∂w = ξ sign(w) / λ²        ∂/∂λ = −2ξ |w| / λ³  +  ψ sign(λ) · s     (λ ≥ λ_min > 0, so sign(λ) = 1),
    s = sign(Σ|λ| − p)  (form "l1")   or   2 (Σ|λ| − p)  (form "l2")

inside ``optimizer.step()`` together with exactly the update the optimizer would make, for the penalised
weights, their λ and the optimizer's other parameters, in one function per optimizer family
(:mod:`~haloprune.penalties.halo.sgd`, :mod:`~haloprune.penalties.halo.adam`) that ``torch.compile``
turns into a single loop per tensor. This module holds what they share: compiling the kernels (with an
eager fallback), checking the optimizer, the per-optimizer :class:`Plan` (which tensors, which
hyperparameters) and the :class:`StepValues` every kernel takes.
A new optimizer family is one more module like ``sgd.py``: a kernel and a driver built on these pieces.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from haloprune.penalties.halo.penalty import HALO

Tensors = list[torch.Tensor]

_COMPILED: dict[tuple[Callable[..., None], str], Callable[..., None]] = {}


def compiled(kernel: Callable[..., None], device_type: str) -> Callable[..., None]:
    """``kernel`` compiled for a device type, or ``kernel`` itself if compiling is off
    (``HALOPRUNE_COMPILE=0``) or impossible."""
    if os.environ.get("HALOPRUNE_COMPILE", "1") == "0":
        return kernel
    fn = _COMPILED.get((kernel, device_type))
    if fn is None:
        fn = _COMPILED[(kernel, device_type)] = _safe_compile(kernel)
    return fn


def _safe_compile(fn: Callable[..., None]) -> Callable[..., None]:
    # With dynamic=False dynamo's guards already pin every input's size and stride; inductor's own
    # per-call size asserts would repeat that check for each of ~30 tensors (~60 µs a step on CPU).
    compiled_fn = torch.compile(fn, dynamic=False, options={"size_asserts": False})
    state = {"ok": True}

    def run(*args: object, **kwargs: object):
        if state["ok"]:
            try:
                return compiled_fn(*args, **kwargs)
            except Exception as err:  # no C++ compiler / Triton: fall back, once, loudly
                state["ok"] = False
                warnings.warn(
                    f"HALO's fused step could not be compiled ({type(err).__name__}); running it "
                    "eagerly (same result, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return fn(*args, **kwargs)

    return run


def check_optimizer(optimizer: torch.optim.Optimizer, supported: tuple[type, ...]) -> str:
    """The optimizer family (``"sgd"`` or ``"adam"``) of a supported optimizer; a clear error otherwise."""
    if type(optimizer) not in supported:
        names = ", ".join(f"torch.optim.{t.__name__}" for t in supported)
        raise TypeError(
            f"fused HALO supports {names}, not {type(optimizer).__name__}; with another optimizer do not "
            "attach: add halo() to the loss and halo.parameters() to the optimizer"
        )
    groups = optimizer.param_groups
    if any(g.get("maximize") for g in groups):
        raise ValueError(f"fused HALO does not support {type(optimizer).__name__}(maximize=True)")
    if type(optimizer) is torch.optim.SGD:
        return "sgd"
    for flag in ("amsgrad", "capturable", "differentiable"):
        if any(g.get(flag) for g in groups):
            raise ValueError(
                f"fused HALO does not support {type(optimizer).__name__}({flag}=True); leave it off or "
                "use HALO in the loss without attaching"
            )
    if any(isinstance(g["lr"], torch.Tensor) or isinstance(g["betas"][0], torch.Tensor) for g in groups):
        raise ValueError("fused HALO needs float lr and betas (not tensors)")
    return "adam"


def read(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the fused step computes with it: in its own precision, at least float32 (bfloat16 λ and
    moments are read in float32, whatever the weights' precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def store(
    dst: torch.Tensor, value: torch.Tensor, seed: torch.Tensor | int | None = None, salt: int = 0
) -> None:
    """``dst.copy_(value)``; with a ``seed`` (HALO's own λ and moments), into a bfloat16 ``dst`` with
    stochastic rounding: rounded up with probability equal to the fraction of the bfloat16 step it lies
    above the value below, so the rounding is unbiased and an update far smaller than bfloat16's
    resolution (about 0.4% of λ) still moves λ by its expected amount. The random bits are a counter-based
    hash of the element's index, ``seed`` (the step count: the same run rounds the same way, and resumes
    exactly) and ``salt`` (which tensor): a few integer operations fused into the kernel, where a
    random-number generator would double a CPU step. Without a seed (the optimizer's own buffers) the copy
    rounds as ``torch.optim`` does."""
    if seed is not None and dst.dtype == torch.bfloat16:
        value = value.float()
        bits = value.view(torch.int32)
        value = ((bits + _noise16(value, seed, salt)) & -65536).view(torch.float32)  # exact in bfloat16
    dst.copy_(value)


_MASK32 = 0xFFFFFFFF


def _noise16(like: torch.Tensor, seed: torch.Tensor | int, salt: int) -> torch.Tensor:
    """16 pseudo-random bits per element of ``like`` (int32 in [0, 65536)): a 32-bit integer hash
    (multiply-xorshift, as in murmur3's finaliser) of (index, seed, salt), computed in int64 without
    overflow."""
    idx = torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape)
    h = (idx * 0x9E3779B1 + (seed * 0x85EBCA6B + salt * 0xC2B2AE35)) & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x045D9F3B) & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x045D9F3B) & _MASK32
    h = h ^ (h >> 16)
    return (h & 0xFFFF).to(torch.int32)


def _views(flat: torch.Tensor, numels: list[int], shapes: list[tuple[int, ...]]) -> Tensors:
    return [c.view(s) for c, s in zip(flat.split(numels), shapes, strict=True)]


Group = dict[str, Any]  # an optimizer param group


@dataclass(frozen=True, eq=False)
class Plan:
    """What the fused step needs that does not change from step to step (cached on the HALO, per optimizer).

    The fields are never reassigned; ``xi``, ``psi`` (filled when target mode changes ξ and ψ) and
    ``counts`` are updated in place."""

    key: tuple[int, ...]  # the optimizer and the storage of λ and its moments the plan was made for
    ws: Tensors  # the penalised weights
    groups: list[Group]  # the optimizer group of each penalised weight
    others: list[tuple[torch.Tensor, Group]]  # the optimizer's other parameters and their groups
    lam_group: Group | None  # λ's optimizer group; None: λ is not in the optimizer
    lams: Tensors  # λ per penalised weight, shaped like it (views into ``halo.lam``)
    bufs: Tensors  # λ's momentum (SGD) or first Adam moment, as views
    sq: Tensors  # λ's second Adam moment, as views (empty unless coupled Adam)
    dtype: torch.dtype  # of the hyperparameter table: λ's, at least float32
    psi: torch.Tensor  # 0-dim, ψ
    xi: torch.Tensor  # 0-dim, ξ: a tensor, so that changing it does not recompile the kernel
    counts: dict[int | str, int]  # step counts of device-resident Adam step tensors, mirrored (no sync)


class StepValues(NamedTuple):
    """A kernel's inputs that change from step to step, as tensors, so that changing them (an lr
    scheduler, target mode's ξ, the step counts in Adam's bias corrections) does not recompile it."""

    hp: torch.Tensor  # per-tensor hyperparameters, one row per tensor (layout: the kernel's docstring)
    lam_sum_term: torch.Tensor  # 0-dim, ψ·s of ∂/∂λ (see the module doc)
    xi: torch.Tensor  # 0-dim, ξ
    seed: torch.Tensor | int = 0  # 0-dim int64 (the fused steps taken): the seed of bfloat16 λ's rounding


def plan_for(
    halo: HALO, optimizer: torch.optim.Optimizer, same: Callable[[Group], tuple], constants: tuple[str, ...]
) -> Plan:
    """The :class:`Plan` for ``optimizer``, made once and cached on ``halo``.

    ``same(group)`` are the hyperparameters the kernel takes as constants: they must agree for all
    penalised weights (and an other parameter is folded into the call only where they agree too)."""
    lam = halo.lam.detach()
    buffers = (halo.lam_momentum.data_ptr(), halo.lam_exp_avg_sq.data_ptr())
    key = (id(optimizer), len(optimizer.param_groups), lam.data_ptr(), *buffers)
    plan: Plan | None = halo.__dict__.get("_plan")
    if plan is not None and plan.key == key:
        return plan
    ws = halo.weights()
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    groups = [group_of.get(id(w)) for w in ws]
    if any(g is None for g in groups):
        raise ValueError("fused HALO: the penalised weights are not all in the optimizer it is attached to")
    if len({same(g) for g in groups}) != 1:
        raise ValueError(f"fused HALO needs the same {'/'.join(constants)} for all penalised weights")
    penalised = {id(w) for w in ws} | {id(halo.lam)}
    dtype = torch.promote_types(lam.dtype, torch.float32)
    plan = Plan(
        key=key,
        ws=ws,
        groups=groups,
        others=[(p, g) for g in optimizer.param_groups for p in g["params"] if id(p) not in penalised],
        lam_group=group_of.get(id(halo.lam)),
        lams=_views(lam, halo.numels, halo.shapes),
        bufs=_views(halo.lam_momentum, halo.numels, halo.shapes) if halo.lam_momentum.numel() else [],
        sq=_views(halo.lam_exp_avg_sq, halo.numels, halo.shapes) if halo.lam_exp_avg_sq.numel() else [],
        dtype=dtype,
        psi=torch.tensor(halo.psi, dtype=dtype, device=lam.device),
        xi=torch.tensor(halo.xi, dtype=dtype, device=lam.device),
        counts={},
    )
    halo.__dict__["_plan"] = plan
    return plan


def lam_hyper(halo: HALO, plan: Plan, g: Group) -> tuple[float, float]:
    """λ's lr and weight decay: its own optimizer group's if it is in the optimizer, else the weights'
    scaled by ``lambda_lr_scale`` (and ``lambda_weight_decay`` if set)."""
    if plan.lam_group is not None:  # λ is in the optimizer: its group (and scheduler) rules
        return plan.lam_group["lr"], plan.lam_group["weight_decay"]
    wd = g["weight_decay"] if halo.lambda_weight_decay is None else halo.lambda_weight_decay
    return g["lr"] * halo.lambda_lr_scale, wd


def budget_term(halo: HALO, plan: Plan) -> torch.Tensor:
    """ψ·s of ∂/∂λ (see the module doc)."""
    if halo.form == "l1" and halo.p == 0.0:
        return plan.psi  # ψ·sign(Σ|λ|) with every λ > 0
    d = halo.lam.detach().abs().sum() - halo.p
    return halo.psi * (2.0 * d if halo.form == "l2" else torch.sign(d))


def step_values(halo: HALO, plan: Plan, hp: list[tuple[float, ...]]) -> StepValues:
    """This step's :class:`StepValues` from the rows of the hyperparameter table."""
    table = torch.tensor(hp, dtype=plan.dtype, device=halo.lam.device)
    return StepValues(hp=table, lam_sum_term=budget_term(halo, plan), xi=plan.xi, seed=halo.fused_steps)


def finish(halo: HALO, updated: Tensors) -> None:
    """After the kernel: count the step, and clear the gradients of what it updated, so that
    ``optimizer.step()`` skips them."""
    halo.fused_steps.add_(1)
    for p in updated:
        p.grad = None


def control(halo: HALO, ws: Tensors, step_size: float) -> None:
    """Target mode: account for this step in the budget and, when due, steer ξ from the density."""
    ctrl = halo.controller
    if ctrl is None:
        return
    if halo.step_budget is None:
        raise RuntimeError(
            "target_sparsity: give the run's length, halo.attach(optimizer, total_steps=N, "
            "scheduler=sched), or call halo.begin_training(step_budget) before training"
        )
    if ctrl.step(step_size):
        nonzero = sum(int(torch.count_nonzero(w)) for w in ws)
        ctrl.update(nonzero / halo.num_penalized, halo.step_budget)
        halo._set_xi()
