"""HALO fused into ``torch.optim.Adam`` / ``AdamW``: one compiled pass per step (see :func:`halo_adam_step`
for the coupled and decoupled semantics, and :mod:`~haloprune.penalties.halo.fused` for the gradients)."""

from __future__ import annotations

import math

import torch

from haloprune.penalties.halo.fused import Tensors, budget_term, compiled, control, lam_hyper, plan_for

_ADAM_CONSTANTS = ("betas", "eps")


def halo_adam_step(
    ws: Tensors,
    grads: Tensors,
    w_m: Tensors,
    w_v: Tensors,
    lams: Tensors,
    lam_m: Tensors,
    lam_v: Tensors,
    hp: torch.Tensor,
    lam_sum_term: torch.Tensor,
    xi: torch.Tensor,
    lambda_min: float,
    lambda_max: float,
    beta1: float,
    beta2: float,
    eps: float,
    decoupled_wd: bool,
    coupled: bool,
    prox: bool,
    others: Tensors,
    other_grads: Tensors,
    other_m: Tensors,
    other_v: Tensors,
) -> None:
    """HALO with ``torch.optim.Adam`` / ``AdamW``: update ``ws``, ``lams`` and the moment buffers in place,
    and take the plain Adam(W) step of ``others``, so ``optimizer.step()`` has nothing left to do.

    ``hp[i] = (lr, wd, lr / (1 − β1^t), sqrt(1 − β2^t), lr_λ, wd_λ, lr_λ / (1 − β1^t_λ), sqrt(1 − β2^t_λ))``
    for penalised tensor ``i`` (the step counts ``t`` already advanced), ``hp[len(ws) + j]`` the first
    four for ``others[j]``. ``decoupled_wd``: AdamW's weight decay (``w ← w·(1 − lr·wd)``) instead of
    Adam's L2 term in the gradient — exactly what ``torch.optim`` does for each.

    ``coupled``: HALO's gradients go through Adam's normalisation with the task gradient — λ has its own
    Adam moments — which is exactly Adam on ``task loss + halo()`` through autograd. Otherwise
    (*decoupled*, like AdamW's weight decay) Adam sees only the task gradient and HALO's update is a plain
    gradient step of size ``lr``: the shrinkage ``lr·ξ·sign(w)/λ²`` before the Adam step (or, with
    ``prox``, soft-thresholding by ``lr·ξ/λ²`` after it) and ``λ ← λ − lr_λ·(∂/∂λ + wd_λ·λ)``; λ then has no
    moments (``lam_m``/``lam_v`` are not read), and HALO's dynamics are those of SGD without momentum at
    the optimizer's learning rate. λ stays in ``[lambda_min, lambda_max]``.
    """
    for i in range(len(ws)):
        w, g = ws[i], grads[i]
        lr, wd, step_size, bc2 = hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3]
        lr_l, wd_l = hp[i, 4], hp[i, 5]
        lam = torch.clamp(lams[i], lambda_min, lambda_max)
        inv = torch.reciprocal(lam)
        inv2 = inv * inv
        shrink = xi * inv2
        g_l = (-2.0 * xi) * w.abs() * (inv2 * inv) + lam_sum_term  # sign(λ) = 1
        g_w = g + shrink * torch.sign(w) if coupled else g
        w_new = _adam(w, g_w, w_m[i], w_v[i], lr, wd, step_size, bc2, beta1, beta2, eps, decoupled_wd)
        if not coupled and not prox:
            w_new = w_new - (lr * shrink) * torch.sign(w)
        if prox:
            w_new = torch.sign(w_new) * torch.clamp_min(w_new.abs() - lr * shrink, 0.0)
        w.copy_(w_new)
        if coupled:
            step_l, bc2_l = hp[i, 6], hp[i, 7]
            lam_new = _adam(
                lam, g_l, lam_m[i], lam_v[i], lr_l, wd_l, step_l, bc2_l, beta1, beta2, eps, decoupled_wd
            )
        else:
            lam_new = lam - lr_l * (g_l + wd_l * lam)
        lams[i].copy_(torch.clamp(lam_new, lambda_min, lambda_max))
    for j in range(len(others)):
        p, d = others[j], other_grads[j]
        k = len(ws) + j
        lr, wd, step_size, bc2 = hp[k, 0], hp[k, 1], hp[k, 2], hp[k, 3]
        p.copy_(_adam(p, d, other_m[j], other_v[j], lr, wd, step_size, bc2, beta1, beta2, eps, decoupled_wd))


def _adam(p, g, m, v, lr, wd, step_size, bc2, beta1: float, beta2: float, eps: float, decoupled_wd: bool):
    """``torch.optim.Adam``/``AdamW``'s update of one tensor: the moments ``m``, ``v`` in place, the new
    value returned (``step_size = lr / (1 − β1^t)``, ``bc2 = sqrt(1 − β2^t)``)."""
    if decoupled_wd:
        p_d = p * (1.0 - lr * wd)
    else:
        g = g + wd * p
        p_d = p
    m_new = m + (1.0 - beta1) * (g - m)
    v_new = beta2 * v + (1.0 - beta2) * g * g
    m.copy_(m_new)
    v.copy_(v_new)
    return p_d - step_size * m_new / (torch.sqrt(v_new) / bc2 + eps)


def _adam_constants(g: dict) -> tuple:
    return (tuple(g["betas"]), g["eps"])


def _adam_state(optimizer: torch.optim.Optimizer, p: torch.Tensor, g: dict) -> dict:
    """``optimizer.state[p]``, initialised as ``torch.optim.Adam`` does on its first step."""
    state = optimizer.state[p]
    if len(state) == 0:
        on_device = g.get("fused") or g.get("capturable")
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _count(step: torch.Tensor, counts: dict[int, int]) -> int:
    """The value of a step-count tensor, read without a device sync after the first time."""
    if step.device.type == "cpu":
        return int(step.item())
    key = id(step)
    if key not in counts:
        counts[key] = int(step.item())
    return counts[key]


@torch.no_grad()
def adam_step(halo, optimizer: torch.optim.Optimizer) -> None:
    """HALO's fused step with ``torch.optim.Adam`` / ``AdamW`` (see :func:`halo_adam_step`)."""
    plan = plan_for(halo, optimizer, _adam_constants, _ADAM_CONSTANTS)
    ws, groups, counts = plan["ws"], plan["groups"], plan["counts"]
    g0 = groups[0]
    (beta1, beta2), eps = g0["betas"], float(g0["eps"])
    decoupled_wd = type(optimizer) is torch.optim.AdamW or bool(g0.get("decoupled_weight_decay"))
    coupled = halo._coupled
    control(halo, ws, float(g0["lr"]))
    t_l = int(halo.fused_steps) + 1 if halo.fused_steps.device.type == "cpu" else None
    if t_l is None:
        t_l = counts.setdefault("halo", int(halo.fused_steps)) + 1
        counts["halo"] = t_l

    def corrections(t: int) -> tuple[float, float]:
        return 1.0 - beta1**t, math.sqrt(1.0 - beta2**t)

    grads, ms, vs, steps, hp = [], [], [], [], []

    def take(p: torch.Tensor, g: dict) -> tuple[float, float, float, float]:
        state = _adam_state(optimizer, p, g)
        t = _count(state["step"], counts) + 1
        if state["step"].device.type != "cpu":
            counts[id(state["step"])] = t
        steps.append(state["step"])
        ms.append(state["exp_avg"])
        vs.append(state["exp_avg_sq"])
        bc1, bc2 = corrections(t)
        return g["lr"], g["weight_decay"], g["lr"] / bc1, bc2

    for w, g in zip(ws, groups, strict=True):
        grads.append(w.grad if w.grad is not None else torch.zeros_like(w))
        lr_l, wd_l = lam_hyper(halo, plan, g)
        bc1_l, bc2_l = corrections(t_l)
        hp.append((*take(w, g), lr_l, wd_l, lr_l / bc1_l, bc2_l))
    others, o_grads = [], []
    for p, g in plan["others"]:
        if p.grad is None or p.grad.is_sparse or _adam_constants(g) != _adam_constants(g0):
            continue  # left to optimizer.step()
        others.append(p)
        o_grads.append(p.grad)
        hp.append((*take(p, g), 0.0, 0.0, 0.0, 0.0))
    n = len(ws)
    device = halo.lam.device
    compiled(halo_adam_step, device.type)(
        ws,
        grads,
        ms[:n],
        vs[:n],
        plan["lams"],
        plan["bufs"] if coupled else plan["lams"],
        plan["sq"] if coupled else plan["lams"],
        torch.tensor(hp, dtype=plan["dtype"], device=device),
        budget_term(halo, plan),
        plan["xi"],
        halo.lambda_min,
        halo.lambda_max,
        float(beta1),
        float(beta2),
        eps,
        decoupled_wd,
        coupled,
        halo.prox,
        others,
        o_grads,
        ms[n:],
        vs[n:],
    )
    torch._foreach_add_(steps, 1.0)
    halo.fused_steps.add_(1)
    for p in [*ws, *others]:  # updated here: optimizer.step() must skip them
        p.grad = None
