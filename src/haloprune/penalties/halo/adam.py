"""HALO fused into ``torch.optim.Adam`` / ``AdamW``: one compiled pass per step (see :func:`halo_adam_step`
for the coupled and decoupled semantics, and :mod:`~haloprune.penalties.halo.fused` for the gradients)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from haloprune.penalties.halo.fused import (
    Folded,
    Frame,
    FusedUpdate,
    Group,
    Held,
    Plan,
    StepValues,
    Taken,
    Tensors,
    lam_terms,
    soft_threshold,
    store,
)

_ADAM_CONSTANTS = ("betas", "eps")
_STATE = ("step", "exp_avg", "exp_avg_sq")  # a parameter's Adam state


class AdamTensors(NamedTuple):
    """What :func:`halo_adam_step` updates in place (and reads). Decoupled, ``lam_m`` and ``lam_v`` are
    placeholders (``lams``) that are not read."""

    ws: Tensors  # the penalised weights
    grads: Tensors  # their gradients (of the task loss)
    w_m: Tensors  # their first Adam moments (``exp_avg``)
    w_v: Tensors  # their second Adam moments (``exp_avg_sq``)
    lams: Tensors  # their λ (views into ``halo.lam``)
    lam_m: Tensors  # λ's Adam moments (coupled)
    lam_v: Tensors
    others: Tensors  # the optimizer's other parameters (biases, ...): a plain Adam(W) step
    other_grads: Tensors
    other_m: Tensors
    other_v: Tensors
    steps: Tensors  # the optimizer's step-count tensors, advanced by one (where on the kernel's device)


class AdamConstants(NamedTuple):
    """:func:`halo_adam_step`'s Python constants: ``torch.compile`` specialises the kernel on them (a change
    recompiles it), so what changes from step to step goes in :class:`~.fused.StepValues` instead."""

    lambda_min: float
    lambda_max: float
    beta1: float
    beta2: float
    eps: float
    decoupled_wd: bool  # AdamW's weight decay, not Adam's L2 term
    coupled: bool  # HALO's gradients through Adam's normalisation (λ with its own moments)
    prox: bool


def halo_adam_step(t: AdamTensors, s: StepValues, c: AdamConstants) -> None:
    """HALO with ``torch.optim.Adam`` / ``AdamW``: update ``t.ws``, ``t.lams`` and the moment buffers in
    place, and take the plain Adam(W) step of ``t.others``, so ``optimizer.step()`` has nothing left to do;
    advance the optimizer's step counts ``t.steps`` by one.

    ``s.hp[i] = (lr, wd, lr / (1 − β1^t), sqrt(1 − β2^t), lr_λ, wd_λ, lr_λ / (1 − β1^t_λ), sqrt(1 − β2^t_λ))``
    for penalised tensor ``i`` (the step counts ``t`` already advanced), ``s.hp[len(ws) + j]`` the first
    four for ``others[j]``. ``c.decoupled_wd``: AdamW's weight decay (``w ← w·(1 − lr·wd)``) instead of
    Adam's L2 term in the gradient — exactly what ``torch.optim`` does for each.

    ``c.coupled``: HALO's gradients go through Adam's normalisation with the task gradient — λ has its own
    Adam moments — which is exactly Adam on ``task loss + halo()`` through autograd. Otherwise
    (*decoupled*, like AdamW's weight decay) Adam sees only the task gradient and HALO's update is a plain
    gradient step of size ``lr``: the shrinkage ``lr·ξ·sign(w)/λ²`` before the Adam step (or, with
    ``prox``, soft-thresholding by ``lr·ξ/λ²`` after it) and ``λ ← λ − lr_λ·(∂/∂λ + wd_λ·λ)``; λ then has no
    moments (``lam_m``/``lam_v`` are not read), and HALO's dynamics are those of SGD without momentum at
    the optimizer's learning rate. λ stays in ``[lambda_min, lambda_max]``.
    """
    for i in range(len(t.ws)):
        w, g, hp = t.ws[i], t.grads[i], s.hp[i]
        lam, shrink, g_l = lam_terms(w, t.lams[i], s, c.lambda_min, c.lambda_max)
        g_l = g_l + s.lam_sum_term  # sign(λ) = 1
        g_w = g + shrink * torch.sign(w) if c.coupled else g
        w_new = _adam(w, g_w, t.w_m[i], t.w_v[i], hp[0], hp[1], hp[2], hp[3], c)
        if not c.coupled and not c.prox:
            w_new = w_new - (hp[0] * shrink) * torch.sign(w)
        if c.prox:
            w_new = soft_threshold(w_new, hp[0] * shrink)
        w.copy_(w_new)
        if c.coupled:
            lam_new = _adam(
                lam, g_l, t.lam_m[i], t.lam_v[i], hp[4], hp[5], hp[6], hp[7], c, s.seed, 3 * i + 1
            )
        else:
            lam_new = lam - hp[4] * (g_l + hp[5] * lam)
        store(t.lams[i], torch.clamp(lam_new, c.lambda_min, c.lambda_max), s.seed, 3 * i)
    for j in range(len(t.others)):
        p, hp = t.others[j], s.hp[len(t.ws) + j]
        p.copy_(_adam(p, t.other_grads[j], t.other_m[j], t.other_v[j], hp[0], hp[1], hp[2], hp[3], c))
    for step in t.steps:
        step.copy_(step + 1.0)


def _adam(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    wd: torch.Tensor,
    step_size: torch.Tensor,
    bc2: torch.Tensor,
    c: AdamConstants,
    seed: torch.Tensor | int | None = None,
    salt: int = 0,
) -> torch.Tensor:
    """``torch.optim.Adam``/``AdamW``'s update of one tensor: the moments ``m``, ``v`` in place, the new
    value returned (``step_size = lr / (1 − β1^t)``, ``bc2 = sqrt(1 − β2^t)``; ``seed``, ``salt``: λ's
    moments, see :func:`~.fused.store`)."""
    if c.decoupled_wd:
        p_d = p * (1.0 - lr * wd)
    else:
        g = g + wd * p
        p_d = p
    m_new = m + (1.0 - c.beta1) * (g - m)
    v_new = c.beta2 * v + (1.0 - c.beta2) * g * g
    store(m, m_new, seed, salt)
    store(v, v_new, seed, salt + 1_000_003)
    return p_d - step_size * m_new / (torch.sqrt(v_new) / bc2 + c.eps)


def _adam_constants(g: Group) -> tuple:
    return (tuple(g["betas"]), g["eps"])


def _adam_state(optimizer: torch.optim.Optimizer, p: torch.Tensor, g: Group) -> dict[str, torch.Tensor]:
    """``optimizer.state[p]``, initialised as ``torch.optim.Adam`` does on its first step."""
    state = optimizer.state[p]
    if len(state) == 0:
        on_device = g.get("fused") or g.get("capturable")
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


@torch.no_grad()
def adam_step(update: FusedUpdate, optimizer: torch.optim.Optimizer) -> None:
    """HALO's fused step with ``torch.optim.Adam`` / ``AdamW`` (see :func:`halo_adam_step`)."""
    halo = update.penalty
    plan = update.plan_for(optimizer, _adam_constants, _ADAM_CONSTANTS)
    g0 = plan.groups[0]
    beta1, beta2 = g0["betas"]
    c = AdamConstants(
        lambda_min=halo.lambda_min,
        lambda_max=halo.lambda_max,
        beta1=float(beta1),
        beta2=float(beta2),
        eps=float(g0["eps"]),
        decoupled_wd=type(optimizer) is torch.optim.AdamW or bool(g0.get("decoupled_weight_decay")),
        coupled=update.coupled,
        prox=halo.prox,
    )
    halo.control(plan.ws, float(g0["lr"]), float(g0["lr"]))
    frame = update.frame(plan, _adam_constants, lambda folded: _take(optimizer, plan, folded, c))
    update.run(halo_adam_step, frame, _rows(update, plan, frame, c), c)
    update.finish(frame)


def _take(optimizer: torch.optim.Optimizer, plan: Plan, folded: Folded, c: AdamConstants) -> Taken:
    """A new frame's tensors (this process's blocks of sharded ones; the gradients left empty), the
    optimizer state they were read from, and the step-count tensors to advance: the penalised weights'
    and their λ's, then those of the other parameters ``folded`` into the call."""
    block = plan.block
    held: Held = [(vars(optimizer), "state", optimizer.state)]
    ms, vs, steps = [], [], []
    for p, g in [*zip(plan.params, plan.groups, strict=True), *folded]:
        state = _adam_state(optimizer, p, g)
        held += [(optimizer.state, p, state), *((state, k, state[k]) for k in _STATE)]
        steps.append(state["step"])
        ms.append(block(state["exp_avg"]))
        vs.append(block(state["exp_avg_sq"]))
    n = len(plan.ws)
    others = [block(p) for p, _ in folded]
    lam_m, lam_v = (plan.bufs, plan.sq) if c.coupled else (plan.lams, plan.lams)  # decoupled: not read
    here = _reads_counts(steps, plan.ws[0].device)
    inside = steps if here else []
    t = AdamTensors(plan.ws, [], ms[:n], vs[:n], plan.lams, lam_m, lam_v, others, [], ms[n:], vs[n:], inside)
    return t, held, steps, not here


def _reads_counts(steps: Tensors, device: torch.device) -> bool:
    """Whether the kernel advances the step counts itself: they are on its device (not so for a CUDA Adam
    without ``fused``/``capturable``, whose counts live on the CPU: the driver advances them there)."""
    return all(step.device == device for step in steps)


def _rows(update: FusedUpdate, plan: Plan, frame: Frame, c: AdamConstants) -> list[tuple[float, ...]]:
    """This step's hyperparameter rows (see :func:`halo_adam_step`), the step counts advanced: the
    penalised weights' with λ's, then the folded parameters'."""
    *counts, halo_count = frame.counted([*frame.steps, update.penalty.fused_steps])
    lam_bc1, lam_bc2 = _corrections(halo_count, c)
    corrections: dict[int, tuple[float, float]] = {}  # per step count (usually one for all tensors)
    rows = []
    n = len(plan.groups)
    groups = [*plan.groups, *(g for _, g in frame.folded)]
    for i, (t, g) in enumerate(zip(counts, groups, strict=True)):
        bc = corrections.get(t)
        if bc is None:
            bc = corrections[t] = _corrections(t, c)
        lr = g["lr"]
        lam = update.lam_hyper(g) if i < n else None
        if lam is None:
            rows.append((lr, g["weight_decay"], lr / bc[0], bc[1], 0.0, 0.0, 0.0, 0.0))
        else:
            rows.append((lr, g["weight_decay"], lr / bc[0], bc[1], lam[0], lam[1], lam[0] / lam_bc1, lam_bc2))
    return rows


def _corrections(t: int, c: AdamConstants) -> tuple[float, float]:
    """Adam's bias corrections at step ``t``: ``1 − β1^t`` and ``sqrt(1 − β2^t)``."""
    return 1.0 - c.beta1**t, math.sqrt(1.0 - c.beta2**t)
