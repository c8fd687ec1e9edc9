"""HALO fused into ``torch.optim.SGD``: one compiled pass per step.

:func:`halo_sgd_step` applies HALO's analytic gradients (see :mod:`~haloprune.penalties.halo.fused`)
together with exactly the update ``torch.optim.SGD`` would make (weight decay, momentum, dampening,
Nesterov) for the penalised weights and their λ, and the plain SGD update of the optimizer's other
parameters; ``torch.compile`` turns it into one loop per tensor (one read of w, grad, λ and the two momentum
buffers, one write of w, λ and the buffers). The step is memory-bound: its floor is reading and writing λ
and λ's momentum once per step. :func:`sgd_step` drives it from the :class:`~.fused.FusedUpdate` of a
HALO attached to an SGD optimizer.
The result equals the reference formulation up to floating-point round-off
(``tests/penalties/halo/test_fused.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from haloprune.penalties.halo.fused import (
    Folded,
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

_SGD_CONSTANTS = ("momentum", "dampening", "nesterov")


class SGDTensors(NamedTuple):
    """What :func:`halo_sgd_step` updates in place (and reads). Without momentum the buffer lists are
    placeholders (``ws``, ``lams``, ``others``) that are not read."""

    ws: Tensors  # the penalised weights
    grads: Tensors  # their gradients (of the task loss)
    w_bufs: Tensors  # their momentum buffers
    lams: Tensors  # their λ (views into ``halo.lam``)
    lam_bufs: Tensors  # λ's momentum buffers
    others: Tensors  # the optimizer's other parameters (biases, ...): a plain SGD step
    other_grads: Tensors
    other_bufs: Tensors


class SGDConstants(NamedTuple):
    """:func:`halo_sgd_step`'s Python constants: ``torch.compile`` specialises the kernel on them (a change
    recompiles it), so what changes from step to step goes in :class:`~.fused.StepValues` instead."""

    lambda_min: float
    lambda_max: float
    momentum: float
    dampening: float
    nesterov: bool
    first: bool  # initialise the momentum buffers to the gradient (the first step, with dampening)
    prox: bool


def halo_sgd_step(t: SGDTensors, s: StepValues, c: SGDConstants) -> None:
    """Update ``t.ws``, ``t.lams`` and their momentum buffers in place, and take a plain SGD step for
    ``t.others`` (the optimizer's remaining parameters, e.g. biases), so that ``optimizer.step()`` has
    nothing left to do.

    ``s.hp[i] = (lr_w, wd_w, lr_λ, wd_λ)`` for tensor ``i`` (float32, or float64 for float64 weights), then
    ``s.hp[len(ws) + j] = (lr, wd, ·, ·)`` for ``others[j]``;
    ``s.lam_sum_term`` is ``ψ·s`` (see module doc). With ``c.first``, the momentum buffers are initialised
    to the gradient, as ``torch.optim.SGD`` does (with zero-initialised buffers and no dampening that is the
    same thing, so callers pass ``False`` then). ``s.xi`` is a 0-dim tensor, so a controller can change it
    between steps without recompiling. λ stays in ``[lambda_min, lambda_max]``.

    ``c.prox``: the shrinkage term ``ξ|w|/λ²`` is applied by its proximal map (soft-thresholding by
    ``lr·ξ/λ²`` after the SGD step on the task loss) instead of its subgradient, so weights the penalty
    wins over become exactly zero instead of oscillating around it, and the momentum buffers hold only
    the task gradient. Same objective, a different (proximal) optimizer.
    The penalty's value is not computed here: a reduction would cost a second pass over the weights
    (``HALO()`` computes it when asked).
    """
    for i in range(len(t.ws)):
        w, lam = t.ws[i], t.lams[i]
        lr_w, wd_w, lr_l, wd_l = s.hp[i, 0], s.hp[i, 1], s.hp[i, 2], s.hp[i, 3]
        lam, shrink, g_l = lam_terms(w, lam, s, c.lambda_min, c.lambda_max)
        g_w = t.grads[i] + wd_w * w if c.prox else t.grads[i] + shrink * torch.sign(w) + wd_w * w
        g_l = g_l + (s.lam_sum_term + wd_l * lam)  # sign(λ) = 1
        if c.momentum != 0.0:
            b_w, b_l = _momentum(g_w, t.w_bufs[i], c), _momentum(g_l, t.lam_bufs[i], c, s.seed, 2 * i + 1)
            g_w = g_w + c.momentum * b_w if c.nesterov else b_w
            g_l = g_l + c.momentum * b_l if c.nesterov else b_l
        w_new = w - lr_w * g_w
        if c.prox:
            w_new = soft_threshold(w_new, lr_w * shrink)
        w.copy_(w_new)
        store(t.lams[i], torch.clamp(lam - lr_l * g_l, c.lambda_min, c.lambda_max), s.seed, 2 * i)
    for i in range(len(t.others)):
        p = t.others[i]
        lr, wd = s.hp[len(t.ws) + i, 0], s.hp[len(t.ws) + i, 1]
        d_p = t.other_grads[i] + wd * p
        if c.momentum != 0.0:
            buf = _momentum(d_p, t.other_bufs[i], c)
            d_p = d_p + c.momentum * buf if c.nesterov else buf
        p.copy_(p - lr * d_p)


def _momentum(
    g: torch.Tensor,
    buf: torch.Tensor,
    c: SGDConstants,
    seed: torch.Tensor | int | None = None,
    salt: int = 0,
) -> torch.Tensor:
    """``torch.optim.SGD``'s momentum buffer update: ``buf`` in place (``seed``, ``salt``: λ's buffer, see
    :func:`~.fused.store`), its new value returned."""
    if c.first:
        new = g
    elif c.dampening == 0.0:
        new = c.momentum * buf + g
    else:
        new = c.momentum * buf + (1.0 - c.dampening) * g
    store(buf, new, seed, salt)
    return new


def _sgd_constants(g: Group) -> tuple:
    return (g["momentum"], g["dampening"], g["nesterov"])


@torch.no_grad()
def sgd_step(update: FusedUpdate, optimizer: torch.optim.Optimizer) -> None:
    """HALO's fused step with ``torch.optim.SGD`` (a pre-step hook: ``optimizer.step()`` then skips the
    parameters updated here, whose gradients are set to ``None``)."""
    halo = update.penalty
    plan = update.plan_for(optimizer, _sgd_constants, _SGD_CONSTANTS)
    g0 = plan.groups[0]
    momentum, dampening = float(g0["momentum"]), float(g0["dampening"])
    c = SGDConstants(
        lambda_min=halo.lambda_min,
        lambda_max=halo.lambda_max,
        momentum=momentum,
        dampening=dampening,
        nesterov=bool(g0["nesterov"]),
        first=dampening != 0.0 and int(halo.fused_steps) == 0,
        prox=halo.prox,
    )
    halo.control(plan.ws, float(g0["lr"]) / (1.0 - momentum), float(g0["lr"]))
    frame = update.frame(plan, _sgd_constants, lambda folded: _take(optimizer, plan, folded, momentum != 0.0))
    hp = [(g["lr"], g["weight_decay"], *update.lam_hyper(g)) for g in plan.groups]
    hp += [(g["lr"], g["weight_decay"], 0.0, 0.0) for _, g in frame.folded]
    update.run(halo_sgd_step, frame, hp, c)
    update.finish(frame)


def _take(optimizer: torch.optim.Optimizer, plan: Plan, folded: Folded, momentum: bool) -> Taken:
    """A new frame's tensors (this process's blocks of sharded ones; the gradients left empty) and the
    optimizer state they were read from: the penalised weights and their λ, then the other parameters
    ``folded`` into the call (``momentum``: with their buffers)."""
    block = plan.block
    held: Held = [(vars(optimizer), "state", optimizer.state)]
    bufs = []
    if momentum:
        for p in [*plan.params, *(p for p, _ in folded)]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p)
            held += [(optimizer.state, p, state), (state, "momentum_buffer", state["momentum_buffer"])]
            bufs.append(block(state["momentum_buffer"]))
    n = len(plan.ws)
    others = [block(p) for p, _ in folded]
    if not momentum:  # placeholders, not read
        bufs = [*plan.ws, *others]
    lam_bufs = plan.bufs if momentum else plan.lams
    return SGDTensors(plan.ws, [], bufs[:n], plan.lams, lam_bufs, others, [], bufs[n:]), held, [], False
