"""HALO's fast path: penalty gradients, the weights' SGD step and λ's SGD step in one fused pass.

The reference formulation adds ``ξ Σ|w|/λ² + ψ|Σ|λ| − p|`` to the loss and lets autograd and a second SGD
optimizer do the rest: about ten extra passes over memory per step, which doubles the step time of a small
network. Here the analytic gradients

    ∂/∂w = ξ sign(w) / λ²        ∂/∂λ = −2ξ |w| / λ³ · [λ ≥ λ_min]  +  ψ sign(λ) · s,
    s = sign(Σ|λ| − p)  (form "l1")   or   2 (Σ|λ| − p)  (form "l2")

are applied inside ``optimizer.step()`` together with exactly the update ``torch.optim.SGD`` would make
(weight decay, momentum, dampening, Nesterov) for the penalised weights and their λ. One function does it
for all of them; ``torch.compile`` turns it into a single loop per tensor (one read of w, grad, λ and the
two momentum buffers, one write of w, λ and the buffers). Without a working compiler it runs eagerly.
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
    xi: float,
    lambda_min: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    first: bool,
) -> None:
    """Update ``ws``, ``lams`` and their momentum buffers in place.

    ``hp[i] = (lr_w, wd_w, lr_λ, wd_λ)`` for tensor ``i`` (float32, or float64 for float64 weights);
    ``lam_sum_term`` is ``ψ·s`` (see module doc). With ``first``, the momentum buffers are initialised to
    the gradient, as ``torch.optim.SGD`` does (with zero-initialised buffers and no dampening that is the
    same thing, so callers pass ``False`` then). The penalty's value is not computed here: a reduction
    would cost a second pass over the weights (``HALO()`` computes it when asked).
    """
    for i in range(len(ws)):
        w, g, lam = ws[i], grads[i], lams[i]
        lr_w, wd_w, lr_l, wd_l = hp[i, 0], hp[i, 1], hp[i, 2], hp[i, 3]
        lam_c = torch.clamp_min(lam, lambda_min)
        inv = 1.0 / lam_c
        inv2 = inv * inv
        g_w = g + xi * torch.sign(w) * inv2 + wd_w * w
        g_l = torch.where(lam >= lambda_min, -2.0 * xi * w.abs() * inv2 * inv, 0.0)
        g_l = g_l + lam_sum_term * torch.sign(lam) + wd_l * lam
        if momentum != 0.0:
            if first:
                b_w, b_l = g_w, g_l
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
        w.copy_(w - lr_w * g_w)
        lam.copy_(torch.clamp_min(lam - lr_l * g_l, lambda_min))


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
