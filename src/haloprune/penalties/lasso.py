"""L1 (lasso) and HALO (hierarchical adaptive lasso) penalties."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from . import PENALTIES
from .base import BudgetTerm, ChecksParameterNames, Penalty, Scope
from .target import SparsityController


@PENALTIES.register("l1")
class L1(Penalty):
    """Lasso: ``ξ · Σ_j |w_j|`` with a fixed, shared coefficient (HALO with λ frozen at 1)."""

    def __init__(
        self, model: nn.Module, xi: float, *, scope: Scope = "all", include_bias: bool = False, **_: Any
    ) -> None:
        if xi < 0:
            raise ValueError(f"xi must be >= 0, got {xi}")
        super().__init__(model, scope=scope, include_bias=include_bias)
        self.xi = float(xi)

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.xi * sum(w.abs().sum() for w in self.weights(model))

    def extra_repr(self) -> str:
        return f"xi={self.xi:g}, penalized={self.num_penalized}"


@PENALTIES.register("halo")
class HALO(BudgetTerm, ChecksParameterNames, Penalty):
    """Hierarchical Adaptive Lasso (Seto, Wells & Zhang, SDM 2021).

    ``ξ · Σ_j |w_j| / λ_j²  +  ψ · | Σ_j |λ_j| − p |``  (``form="l2"`` squares the last term),

    with one trainable ``λ_j`` per penalised weight, all in one flat parameter ``self.lam`` (in penalised
    parameter order, each tensor flattened). λ is kept in ``[lambda_min, ∞)``; the penalty reads
    ``max(λ, lambda_min)``, so it stays finite whatever happens. Inside that range value and gradients
    are exactly the paper's.

    Two ways to apply it, same result up to round-off:

    * ``fused=True`` (default, fast): ``halo.attach(optimizer)`` (an ``torch.optim.SGD``) makes every
      ``optimizer.step()`` add HALO's analytic gradients and update the penalised weights and λ — and
      take the optimizer's ordinary SGD step for its other parameters — in one fused pass (see
      :mod:`haloprune.penalties.fused`); the loss is just the task loss. Gradients of the parameters it
      updated are ``None`` after the step. ``halo()`` still
      returns the penalty's value (detached), for logging.
    * ``fused=False`` (the reference formulation): add ``halo()`` to the loss, give ``halo.parameters()``
      to the optimizer, and ``attach`` it so λ is clamped back into range after each step.

    λ lives in ``[lambda_min, lambda_max]`` whatever the step size: it can neither step through zero
    (large ψ, tiny ξ) nor blow up (a weight regrowing while its λ sits at the floor).

    **Target sparsity** (``target_sparsity=0.98``, fused path): instead of ξ and ψ, give the sparsity you
    want; ``ψ = psi_hat / B`` and ``ξ = c³/ψ²`` with ``c`` steered during training from the measured
    density (:class:`~haloprune.penalties.target.SparsityController`), where ``B = Σ lr_t/(1 − momentum)``
    is the run's step budget (``fit`` passes it via :meth:`begin_training`; library users call it once
    before training). The shrinkage is applied by its proximal map (``prox=True``), so pruned-to-be
    weights end exactly at zero and the achieved sparsity is the fraction of exact zeros.
    """

    def __init__(
        self,
        model: nn.Module,
        xi: float | None = None,
        psi: float | None = None,
        p: float = 0.0,
        form: Literal["l1", "l2"] = "l1",
        lambda_init: float = 1.0,
        lambda_min: float = 1e-3,
        *,
        lambda_max: float = 1e3,
        target_sparsity: float | None = None,
        psi_hat: float = 5.0,
        ramp_end: float = 0.75,
        step_budget: float | None = None,
        prox: bool = False,
        fused: bool = True,
        lambda_lr_scale: float = 1.0,
        lambda_weight_decay: float | None = None,
        scope: Scope = "all",
        include_bias: bool = False,
        **_: Any,
    ) -> None:
        self.controller: SparsityController | None = None
        if target_sparsity is not None:
            if xi or psi:
                raise ValueError(
                    "target_sparsity sets xi and psi itself (from psi_hat and the step budget); "
                    "leave xi and psi unset"
                )
            if not fused:
                raise ValueError("target_sparsity needs the fused path (fused=True, torch.optim.SGD)")
            if psi_hat <= 0:
                raise ValueError(f"psi_hat must be > 0, got {psi_hat}")
            self.controller = SparsityController(float(target_sparsity), ramp_end=float(ramp_end))
            xi, psi, prox = 0.0, 0.0, True
        elif xi is None or psi is None:
            raise ValueError("give xi and psi, or target_sparsity")
        if xi < 0 or psi < 0:
            raise ValueError(f"xi and psi must be >= 0, got xi={xi}, psi={psi}")
        self._init_budget(p, form)
        if not 0 < lambda_min <= lambda_init <= lambda_max:
            raise ValueError(
                "need 0 < lambda_min <= lambda_init <= lambda_max, got "
                f"{lambda_min}, {lambda_init} and {lambda_max}"
            )
        if prox and not fused:
            raise ValueError("prox=True is a fused-path update (fused=True, torch.optim.SGD)")
        super().__init__(model, scope=scope, include_bias=include_bias)
        self.xi, self.psi = float(xi), float(psi)
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        self.psi_hat = float(psi_hat)
        self.prox = prox
        self.step_budget: float | None = None
        self.fused = fused
        self.lambda_lr_scale = float(lambda_lr_scale)
        self.lambda_weight_decay = lambda_weight_decay
        device = self.weights()[0].device
        self.lam = nn.Parameter(torch.full((self.num_penalized,), float(lambda_init), device=device))
        # λ's momentum on the fused path (the optimizer keeps it on the reference path).
        self.register_buffer("lam_momentum", torch.zeros_like(self.lam, requires_grad=False))
        # Set once the fused path has made a step (matters only for SGD with dampening).
        self.register_buffer("fused_steps", torch.zeros((), dtype=torch.int64, device=device))
        self._attached: list[Any] = []
        if step_budget is not None:
            self.begin_training(step_budget)

    def begin_training(self, step_budget: float) -> None:
        """Tell the penalty the run's step budget ``B = Σ_t lr_t / (1 − momentum)`` (target mode needs it)."""
        if self.controller is None:
            return
        if not step_budget > 0 or not math.isfinite(step_budget):
            raise ValueError(f"step budget must be a positive number, got {step_budget}")
        self.step_budget = float(step_budget)
        self.psi = self.psi_hat / self.step_budget
        self._set_xi()

    def _set_xi(self) -> None:
        """ξ = c³/ψ² for the controller's current c."""
        assert self.controller is not None and self.step_budget is not None
        self.xi = self.controller.c(self.step_budget) ** 3 / self.psi**2
        plan = self.__dict__.get("_plan")
        if plan is not None:
            plan["xi"].fill_(self.xi)
            plan["psi"].fill_(self.psi)

    def get_extra_state(self) -> dict[str, Any]:
        state = super().get_extra_state()
        if self.controller is not None:
            state["controller"] = self.controller.state()
            state["step_budget"] = self.step_budget
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        if self.controller is not None and "controller" in state:
            self.controller.load(state["controller"])
            if state.get("step_budget") is not None:
                self.begin_training(state["step_budget"])

    def lambdas(self) -> dict[str, torch.Tensor]:
        """λ per penalised parameter, shaped like it (views into ``self.lam``)."""
        chunks = self.lam.split(self.numels)
        return {n: c.view(s) for n, c, s in zip(self.param_names, chunks, self.shapes, strict=True)}

    @property
    def in_loss(self) -> bool:
        return not self.fused

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        if self.fused:
            if not self._attached:
                raise RuntimeError(
                    "fused HALO applies itself inside optimizer.step(): call halo.attach(optimizer) first "
                    "(or build HALO(..., fused=False) and add halo() to the loss)"
                )
            with torch.no_grad():
                return self._value(model)
        return self._value(model)

    def _value(self, model: nn.Module | None) -> torch.Tensor:
        """The reference formula, through autograd."""
        w_abs = torch.cat([w.abs().flatten() for w in self.weights(model)])
        lam = self.lam.clamp(self.lambda_min, self.lambda_max)
        shrink = (w_abs / lam.square()).sum()
        return self.xi * shrink + self.psi * self.budget_term(self.lam.abs().sum())

    @torch.no_grad()
    def project_(self) -> None:
        self.lam.clamp_(self.lambda_min, self.lambda_max)

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Hook HALO into ``optimizer.step()``; returns the removable hook handle.

        Fused: a pre-step hook performs HALO's fused update of the penalised weights and λ (the optimizer
        then updates everything else). Reference: a post-step hook clamps λ back into range.
        """
        if not self.fused:
            handle = super().attach(optimizer)
        else:
            if type(optimizer) is not torch.optim.SGD:
                raise TypeError(
                    f"fused HALO works with torch.optim.SGD, not {type(optimizer).__name__}; "
                    "use HALO(..., fused=False) with other optimizers"
                )
            if any(g.get("maximize") for g in optimizer.param_groups):
                raise ValueError("fused HALO does not support SGD(maximize=True)")
            self.project_()
            handle = optimizer.register_step_pre_hook(lambda opt, *_: self._fused_step(opt))
        self._attached.append(handle)
        return handle

    def _fused_plan(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What the fused step needs that does not change from step to step (cached per optimizer)."""
        key = (id(optimizer), len(optimizer.param_groups), self.lam.data_ptr())
        plan = self.__dict__.get("_plan")
        if plan is not None and plan["key"] == key:
            return plan
        ws = self.weights()
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        groups = [group_of.get(id(w)) for w in ws]
        if any(g is None for g in groups):
            raise ValueError(
                "fused HALO: the penalised weights are not all in the optimizer it is attached to"
            )
        if len({(g["momentum"], g["dampening"], g["nesterov"]) for g in groups}) != 1:
            raise ValueError(
                "fused HALO needs the same momentum/dampening/nesterov for all penalised weights"
            )
        lam = self.lam.detach()
        penalised = {id(w) for w in ws} | {id(self.lam)}
        others = [(p, g) for g in optimizer.param_groups for p in g["params"] if id(p) not in penalised]
        plan = {
            "key": key,
            "others": others,
            "ws": ws,
            "groups": groups,
            "lam_group": group_of.get(id(self.lam)),
            "lams": [c.view(s) for c, s in zip(lam.split(self.numels), self.shapes, strict=True)],
            "bufs": [
                c.view(s) for c, s in zip(self.lam_momentum.split(self.numels), self.shapes, strict=True)
            ],
            "dtype": torch.promote_types(lam.dtype, torch.float32),
            "psi": torch.tensor(
                self.psi, dtype=torch.promote_types(lam.dtype, torch.float32), device=lam.device
            ),
            "xi": torch.tensor(
                self.xi, dtype=torch.promote_types(lam.dtype, torch.float32), device=lam.device
            ),
        }
        self.__dict__["_plan"] = plan
        return plan

    @torch.no_grad()
    def _fused_step(self, optimizer: torch.optim.Optimizer) -> None:
        from .fused import get_step_fn

        plan = self._fused_plan(optimizer)
        ws, groups, lam_group = plan["ws"], plan["groups"], plan["lam_group"]
        g0 = groups[0]
        momentum, dampening, nesterov = float(g0["momentum"]), float(g0["dampening"]), bool(g0["nesterov"])
        ctrl = self.controller
        if ctrl is not None:
            if self.step_budget is None:
                raise RuntimeError(
                    "target_sparsity: call halo.begin_training(step_budget) before training "
                    "(step_budget = Σ over steps of lr / (1 − momentum))"
                )
            if ctrl.step(float(g0["lr"]) / (1.0 - momentum)):
                nonzero = sum(int(torch.count_nonzero(w)) for w in ws)
                ctrl.update(nonzero / self.num_penalized, self.step_budget)
                self._set_xi()
        grads, w_bufs, hp = [], [], []
        for w, g in zip(ws, groups, strict=True):
            grads.append(w.grad if w.grad is not None else torch.zeros_like(w))
            if momentum != 0.0:
                state = optimizer.state[w]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(w)
                w_bufs.append(state["momentum_buffer"])
            if lam_group is not None:  # λ is in the optimizer: its group (and scheduler) rules
                lr_l, wd_l = lam_group["lr"], lam_group["weight_decay"]
            else:
                lr_l = g["lr"] * self.lambda_lr_scale
                wd_l = g["weight_decay"] if self.lambda_weight_decay is None else self.lambda_weight_decay
            hp.append((g["lr"], g["weight_decay"], lr_l, wd_l))
        device = self.lam.device
        if self.form == "l1" and self.p == 0.0:
            term = plan["psi"]  # ψ·sign(Σ|λ|) with every λ > 0
        else:
            d = self.lam.detach().abs().sum() - self.p
            term = self.psi * (2.0 * d if self.form == "l2" else torch.sign(d))
        # The optimizer's other parameters (biases, ...) get their plain SGD step in the same call.
        others, o_grads, o_bufs = [], [], []
        for p, g in plan["others"]:
            if p.grad is None or p.grad.is_sparse:
                continue
            if (g["momentum"], g["dampening"], g["nesterov"]) != (momentum, dampening, nesterov):
                continue  # left to optimizer.step()
            others.append(p)
            o_grads.append(p.grad)
            if momentum != 0.0:
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p)
                o_bufs.append(state["momentum_buffer"])
            hp.append((g["lr"], g["weight_decay"], 0.0, 0.0))
        first = dampening != 0.0 and int(self.fused_steps) == 0
        dtype = plan["dtype"]
        get_step_fn(device.type)(
            ws,
            grads,
            w_bufs or grads,
            plan["lams"],
            plan["bufs"] if momentum != 0.0 else plan["lams"],
            torch.tensor(hp, dtype=dtype, device=device),
            term,
            plan["xi"],
            self.lambda_min,
            self.lambda_max,
            momentum,
            dampening,
            nesterov,
            first,
            others,
            o_grads,
            o_bufs or o_grads,
            self.prox,
        )
        if first:
            self.fused_steps.fill_(1)
        for p in [*ws, *others]:  # updated here: optimizer.step() must skip them
            p.grad = None

    def stats(self) -> dict[str, float]:
        lam = self.lam.detach()
        n = lam.numel()
        q = [lam.kthvalue(max(1, min(n, round(f * n)))).values.item() for f in (0.01, 0.5, 0.99)]
        return {
            "lambda_mean": lam.mean().item(),
            "lambda_min": lam.min().item(),
            "lambda_p01": q[0],
            "lambda_median": q[1],
            "lambda_p99": q[2],
            "lambda_at_floor": (lam <= self.lambda_min).float().mean().item(),
            **self._target_stats(),
        }

    def _target_stats(self) -> dict[str, float]:
        ctrl = self.controller
        if ctrl is None or self.step_budget is None:
            return {}
        return {
            "xi": self.xi,
            "psi": self.psi,
            "c_hat": math.exp(ctrl.log_c_hat),
            "density": ctrl.density,
            "target_density": ctrl.target_density(ctrl.spent / self.step_budget),
            "budget_spent": ctrl.spent / self.step_budget,
        }

    def extra_repr(self) -> str:
        return (
            f"xi={self.xi:g}, psi={self.psi:g}, p={self.p:g}, form={self.form!r}, "
            f"lambda_min={self.lambda_min:g}, lambda_max={self.lambda_max:g}, fused={self.fused}, "
            f"prox={self.prox}, target_sparsity="
            f"{self.controller.sparsity if self.controller else None}, penalized={self.num_penalized}"
        )
