"""HALO's fast path: penalty gradients, the weights' SGD step and λ's SGD step in one fused pass.

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


_COMPILED: dict[str, Callable[..., None]] = {}


def get_step_fn(device_type: str) -> Callable[..., None]:
    """The compiled step for a device type, or the eager one if compiling is off or impossible."""
    if os.environ.get("HALOPRUNE_COMPILE", "1") == "0":
        return halo_sgd_step
    fn = _COMPILED.get(device_type)
    if fn is None:
        fn = _COMPILED[device_type] = _safe_compile(halo_sgd_step)
    return fn


def _safe_compile(fn: Callable[..., None]) -> Callable[..., None]:
    compiled = torch.compile(fn, dynamic=False)
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
