"""HALO's fast path: penalty gradients and the optimizer's update of weights and λ in one fused pass.

The SGD kernel is described first; :func:`halo_adam_step` does the same for Adam and AdamW.

The reference formulation adds ``ξ Σ|w|/λ² + ψ|Σ|λ| − p|`` to the loss and lets autograd and a second SGD
optimizer do the rest: about ten extra passes over memory per step, which doubles the step time of a small
network. Here the analytic gradients

    ∂/∂w = ξ sign(w) / λ²        ∂/∂λ = −2ξ |w| / λ³  +  ψ sign(λ) · s     (λ ≥ λ_min > 0, so sign(λ) = 1),
    s = sign(Σ|λ| − p)  (form "l1")   or   2 (Σ|λ| − p)  (form "l2")

are applied inside ``optimizer.step()`` together with exactly the update ``torch.optim.SGD`` would make
(weight decay, momentum, dampening, Nesterov) for the penalised weights and their λ, and the plain SGD
update of the optimizer's other parameters. One function does it all; ``torch.compile`` turns it into a
single loop per tensor (one read of w, grad, λ and the two momentum buffers, one write of w, λ and the
buffers). Without a working compiler it runs eagerly. The step is memory-bound: its floor is reading and
writing λ and λ's momentum once per step.
The result equals the reference formulation up to floating-point round-off (``tests/test_fused.py``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import torch

Tensors = list[torch.Tensor]


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


_KERNELS: dict[str, Callable[..., None]] = {"sgd": halo_sgd_step, "adam": halo_adam_step}
_COMPILED: dict[tuple[str, str], Callable[..., None]] = {}


def get_step_fn(device_type: str, kind: str = "sgd") -> Callable[..., None]:
    """The compiled step of optimizer family ``kind`` (``"sgd"`` or ``"adam"``) for a device type, or the
    eager one if compiling is off or impossible."""
    fn = _KERNELS[kind]
    if os.environ.get("HALOPRUNE_COMPILE", "1") == "0":
        return fn
    compiled = _COMPILED.get((device_type, kind))
    if compiled is None:
        compiled = _COMPILED[(device_type, kind)] = _safe_compile(fn)
    return compiled


def _safe_compile(fn: Callable[..., None]) -> Callable[..., None]:
    # With dynamic=False dynamo's guards already pin every input's size and stride; inductor's own
    # per-call size asserts would repeat that check for each of ~30 tensors (~60 µs a step on CPU).
    compiled = torch.compile(fn, dynamic=False, options={"size_asserts": False})
    state = {"ok": True}

    def run(*args: object, **kwargs: object):
        if state["ok"]:
            try:
                return compiled(*args, **kwargs)
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


# ------------------------------------------------------------------ driving the kernels from a HALO


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


def _views(flat: torch.Tensor, numels: list[int], shapes: list[tuple[int, ...]]) -> Tensors:
    return [c.view(s) for c, s in zip(flat.split(numels), shapes, strict=True)]


def _plan(halo, optimizer: torch.optim.Optimizer, same: Callable[[dict], tuple]) -> dict:
    """What the fused step needs that does not change from step to step (cached per optimizer).

    ``same(group)`` are the hyperparameters the kernel takes as constants: they must agree for all
    penalised weights (and an other parameter is folded into the call only where they agree too)."""
    lam = halo.lam.detach()
    key = (id(optimizer), len(optimizer.param_groups), lam.data_ptr(), halo.lam_exp_avg_sq.data_ptr())
    plan = halo.__dict__.get("_plan")
    if plan is not None and plan["key"] == key:
        return plan
    ws = halo.weights()
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    groups = [group_of.get(id(w)) for w in ws]
    if any(g is None for g in groups):
        raise ValueError("fused HALO: the penalised weights are not all in the optimizer it is attached to")
    if len({same(g) for g in groups}) != 1:
        raise ValueError(
            f"fused HALO needs the same {'/'.join(_CONSTANTS[halo._kind])} for all penalised weights"
        )
    penalised = {id(w) for w in ws} | {id(halo.lam)}
    dtype = torch.promote_types(lam.dtype, torch.float32)
    plan = {
        "key": key,
        "others": [(p, g) for g in optimizer.param_groups for p in g["params"] if id(p) not in penalised],
        "ws": ws,
        "groups": groups,
        "lam_group": group_of.get(id(halo.lam)),
        "lams": _views(lam, halo.numels, halo.shapes),
        "bufs": _views(halo.lam_momentum, halo.numels, halo.shapes),
        "sq": _views(halo.lam_exp_avg_sq, halo.numels, halo.shapes) if halo.lam_exp_avg_sq.numel() else [],
        "dtype": dtype,
        "psi": torch.tensor(halo.psi, dtype=dtype, device=lam.device),
        "xi": torch.tensor(halo.xi, dtype=dtype, device=lam.device),
        "counts": {},  # step counts of device-resident Adam step tensors, mirrored here (no sync per step)
    }
    halo.__dict__["_plan"] = plan
    return plan


_CONSTANTS = {"sgd": ("momentum", "dampening", "nesterov"), "adam": ("betas", "eps")}


def _sgd_constants(g: dict) -> tuple:
    return (g["momentum"], g["dampening"], g["nesterov"])


def _adam_constants(g: dict) -> tuple:
    return (tuple(g["betas"]), g["eps"])


def _lam_hyper(halo, plan: dict, g: dict) -> tuple[float, float]:
    """λ's lr and weight decay: its own optimizer group's if it is in the optimizer, else the weights'
    scaled by ``lambda_lr_scale`` (and ``lambda_weight_decay`` if set)."""
    lam_group = plan["lam_group"]
    if lam_group is not None:  # λ is in the optimizer: its group (and scheduler) rules
        return lam_group["lr"], lam_group["weight_decay"]
    wd = g["weight_decay"] if halo.lambda_weight_decay is None else halo.lambda_weight_decay
    return g["lr"] * halo.lambda_lr_scale, wd


def _budget_term(halo, plan: dict) -> torch.Tensor:
    """ψ·s of ∂/∂λ (see the module doc)."""
    if halo.form == "l1" and halo.p == 0.0:
        return plan["psi"]  # ψ·sign(Σ|λ|) with every λ > 0
    d = halo.lam.detach().abs().sum() - halo.p
    return halo.psi * (2.0 * d if halo.form == "l2" else torch.sign(d))


def _control(halo, ws: Tensors, step_size: float) -> None:
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


@torch.no_grad()
def sgd_step(halo, optimizer: torch.optim.Optimizer) -> None:
    """HALO's fused step with ``torch.optim.SGD`` (a pre-step hook: ``optimizer.step()`` then skips the
    parameters updated here, whose gradients are set to ``None``)."""
    plan = _plan(halo, optimizer, _sgd_constants)
    ws, groups = plan["ws"], plan["groups"]
    g0 = groups[0]
    momentum, dampening, nesterov = float(g0["momentum"]), float(g0["dampening"]), bool(g0["nesterov"])
    _control(halo, ws, float(g0["lr"]) / (1.0 - momentum))
    grads, w_bufs, hp = [], [], []
    for w, g in zip(ws, groups, strict=True):
        grads.append(w.grad if w.grad is not None else torch.zeros_like(w))
        if momentum != 0.0:
            w_bufs.append(_sgd_buffer(optimizer, w))
        hp.append((g["lr"], g["weight_decay"], *_lam_hyper(halo, plan, g)))
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
    get_step_fn(device.type, "sgd")(
        ws,
        grads,
        w_bufs or grads,
        plan["lams"],
        plan["bufs"] if momentum != 0.0 else plan["lams"],
        torch.tensor(hp, dtype=plan["dtype"], device=device),
        _budget_term(halo, plan),
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
    plan = _plan(halo, optimizer, _adam_constants)
    ws, groups, counts = plan["ws"], plan["groups"], plan["counts"]
    g0 = groups[0]
    (beta1, beta2), eps = g0["betas"], float(g0["eps"])
    decoupled_wd = type(optimizer) is torch.optim.AdamW or bool(g0.get("decoupled_weight_decay"))
    coupled = halo._coupled
    _control(halo, ws, float(g0["lr"]))
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
        lr_l, wd_l = _lam_hyper(halo, plan, g)
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
    get_step_fn(device.type, "adam")(
        ws,
        grads,
        ms[:n],
        vs[:n],
        plan["lams"],
        plan["bufs"] if coupled else plan["lams"],
        plan["sq"] if coupled else plan["lams"],
        torch.tensor(hp, dtype=plan["dtype"], device=device),
        _budget_term(halo, plan),
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
