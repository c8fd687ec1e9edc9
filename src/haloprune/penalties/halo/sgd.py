"""HALO fused into ``torch.optim.SGD``: one compiled pass per step.

:func:`halo_sgd_step` applies HALO's analytic gradients (see :mod:`~haloprune.penalties.halo.fused`)
together with exactly the update ``torch.optim.SGD`` would make (weight decay, momentum, dampening,
Nesterov) for the penalised weights and their λ, and the plain SGD update of the optimizer's other
parameters; ``torch.compile`` turns it into one loop per tensor (one read of w, grad, λ and the two momentum
buffers, one write of w, λ and the buffers). The step is memory-bound: its floor is reading and writing λ
and λ's momentum once per step. :func:`sgd_step` drives it from a HALO attached to an SGD optimizer.
The result equals the reference formulation up to floating-point round-off
(``tests/penalties/test_fused.py``).
"""

from __future__ import annotations

import torch

from haloprune.penalties.halo.fused import Tensors, budget_term, compiled, control, lam_hyper, plan_for

_SGD_CONSTANTS = ("momentum", "dampening", "nesterov")


def halo_sgd_step(
    ws: Tensors,
    grads: Tensors,
    w_bufs: Tensors,
    lams: Tensors,
    lam_bufs: Tensors,
    hp: torch.Tensor,
    lam_sum_term: torch.Tensor,
    xi: torch.Tensor,
    lambda_min: float,
    lambda_max: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    first: bool,
    others: Tensors,
    other_grads: Tensors,
    other_bufs: Tensors,
    prox: bool = False,
) -> None:
    """Update ``ws``, ``lams`` and their momentum buffers in place, and take a plain SGD step for ``others``
    (the optimizer's remaining parameters, e.g. biases), so that ``optimizer.step()`` has nothing left to do.

    ``hp[i] = (lr_w, wd_w, lr_λ, wd_λ)`` for tensor ``i`` (float32, or float64 for float64 weights), then
    ``hp[len(ws) + j] = (lr, wd, ·, ·)`` for ``others[j]``;
    ``lam_sum_term`` is ``ψ·s`` (see module doc). With ``first``, the momentum buffers are initialised to
    the gradient, as ``torch.optim.SGD`` does (with zero-initialised buffers and no dampening that is the
    same thing, so callers pass ``False`` then). ``xi`` is a 0-dim tensor, so a controller can change it
    between steps without recompiling. λ stays in ``[lambda_min, lambda_max]``.

    ``prox``: the shrinkage term ``ξ|w|/λ²`` is applied by its proximal map (soft-thresholding by
    ``lr·ξ/λ²`` after the SGD step on the task loss) instead of its subgradient, so weights the penalty
    wins over become exactly zero instead of oscillating around it, and the momentum buffers hold only
    the task gradient. Same objective, a different (proximal) optimizer.
    The penalty's value is not computed here: a reduction would cost a second pass over the weights
    (``HALO()`` computes it when asked).
    """
    for i in range(len(ws)):
        w, g, lam = ws[i], grads[i], lams[i]
        lr_w, wd_w, lr_l, wd_l = hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3]
        # λ is kept >= λ_min between steps; clamping here makes any value set from outside count as projected.
        lam = torch.clamp(lam, lambda_min, lambda_max)
        inv = torch.reciprocal(lam)
        inv2 = inv * inv
        shrink = xi * inv2
        g_w = g + wd_w * w if prox else g + shrink * torch.sign(w) + wd_w * w
        g_l = (-2.0 * xi) * w.abs() * (inv2 * inv) + (lam_sum_term + wd_l * lam)  # sign(λ) = 1
        if momentum != 0.0:
            if first:
                b_w, b_l = g_w, g_l
            elif dampening == 0.0:
                b_w = momentum * w_bufs[i] + g_w
                b_l = momentum * lam_bufs[i] + g_l
            else:
                b_w = momentum * w_bufs[i] + (1.0 - dampening) * g_w
                b_l = momentum * lam_bufs[i] + (1.0 - dampening) * g_l
            w_bufs[i].copy_(b_w)
            lam_bufs[i].copy_(b_l)
            if nesterov:
                g_w = g_w + momentum * b_w
                g_l = g_l + momentum * b_l
            else:
                g_w, g_l = b_w, b_l
        w_new = w - lr_w * g_w
        if prox:
            w_new = torch.sign(w_new) * torch.clamp_min(w_new.abs() - lr_w * shrink, 0.0)
        w.copy_(w_new)
        lams[i].copy_(torch.clamp(lam - lr_l * g_l, lambda_min, lambda_max))
    for i in range(len(others)):
        p = others[i]
        lr, wd = hp[len(ws) + i, 0], hp[len(ws) + i, 1]
        d_p = other_grads[i] + wd * p
        if momentum != 0.0:
            if first:
                buf = d_p
            elif dampening == 0.0:
                buf = momentum * other_bufs[i] + d_p
            else:
                buf = momentum * other_bufs[i] + (1.0 - dampening) * d_p
            other_bufs[i].copy_(buf)
            d_p = d_p + momentum * buf if nesterov else buf
        p.copy_(p - lr * d_p)


def _sgd_constants(g: dict) -> tuple:
    return (g["momentum"], g["dampening"], g["nesterov"])


@torch.no_grad()
def sgd_step(halo, optimizer: torch.optim.Optimizer) -> None:
    """HALO's fused step with ``torch.optim.SGD`` (a pre-step hook: ``optimizer.step()`` then skips the
    parameters updated here, whose gradients are set to ``None``)."""
    plan = plan_for(halo, optimizer, _sgd_constants, _SGD_CONSTANTS)
    ws, groups = plan["ws"], plan["groups"]
    g0 = groups[0]
    momentum, dampening, nesterov = float(g0["momentum"]), float(g0["dampening"]), bool(g0["nesterov"])
    control(halo, ws, float(g0["lr"]) / (1.0 - momentum))
    grads, w_bufs, hp = [], [], []
    for w, g in zip(ws, groups, strict=True):
        grads.append(w.grad if w.grad is not None else torch.zeros_like(w))
        if momentum != 0.0:
            w_bufs.append(_sgd_buffer(optimizer, w))
        hp.append((g["lr"], g["weight_decay"], *lam_hyper(halo, plan, g)))
    # The optimizer's other parameters (biases, ...) get their plain SGD step in the same call.
    others, o_grads, o_bufs = [], [], []
    for p, g in plan["others"]:
        if p.grad is None or p.grad.is_sparse or _sgd_constants(g) != _sgd_constants(g0):
            continue  # left to optimizer.step()
        others.append(p)
        o_grads.append(p.grad)
        if momentum != 0.0:
            o_bufs.append(_sgd_buffer(optimizer, p))
        hp.append((g["lr"], g["weight_decay"], 0.0, 0.0))
    first = dampening != 0.0 and int(halo.fused_steps) == 0
    device = halo.lam.device
    compiled(halo_sgd_step, device.type)(
        ws,
        grads,
        w_bufs or grads,
        plan["lams"],
        plan["bufs"] if momentum != 0.0 else plan["lams"],
        torch.tensor(hp, dtype=plan["dtype"], device=device),
        budget_term(halo, plan),
        plan["xi"],
        halo.lambda_min,
        halo.lambda_max,
        momentum,
        dampening,
        nesterov,
        first,
        others,
        o_grads,
        o_bufs or o_grads,
        halo.prox,
    )
    halo.fused_steps.add_(1)
    for p in [*ws, *others]:  # updated here: optimizer.step() must skip them
        p.grad = None


def _sgd_buffer(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
    state = optimizer.state[p]
    if state.get("momentum_buffer") is None:
        state["momentum_buffer"] = torch.zeros_like(p)
    return state["momentum_buffer"]
