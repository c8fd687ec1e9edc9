"""HALO, the hierarchical adaptive lasso: the penalty (the formula and its λ).

What it owns, each in its own module: the fused update that ``attach`` creates
(:class:`~haloprune.penalties.halo.fused.FusedUpdate`, run by the ``sgd`` and ``adam`` drivers) and
target mode (:class:`~haloprune.penalties.halo.target.TargetMode`)."""

from __future__ import annotations

import math
from typing import Any, Literal, Unpack

import torch
from torch import nn

from haloprune.core.sharded import kth_smallest, like, local, shard_like, summed, total
from haloprune.penalties.base import BudgetTerm, ChecksParameterNames, Penalty, SelectionArgs
from haloprune.penalties.halo.adam import adam_step
from haloprune.penalties.halo.fused import (
    Driver,
    FusedUpdate,
    Tensors,
    check_optimizer,
    lam_squared,
    read,
    views,
)
from haloprune.penalties.halo.sgd import sgd_step
from haloprune.penalties.halo.target import (
    CONTROLS,
    DEFAULT_CONTROL,
    SparsityController,
    TargetMode,
    step_budget,
)

Coupling = Literal["coupled", "decoupled"]
#: λ's storage: ``float32``, or ``bfloat16`` (half the memory; the fused step computes in float32 and
#: rounds λ and its moments back stochastically, so updates far below bfloat16's resolution still count)
LambdaDtype = Literal["float32", "bfloat16"]
#: How target mode sets ξ (:data:`~haloprune.penalties.halo.target.CONTROLS`)
TargetControl = Literal["exact", "pi", "hard"]

#: How HALO combines with Adam/AdamW when not told, for fixed ξ and ψ (measured on Fashion-MNIST
#: LeNet-300-100 with AdamW: docs/results/adam.md). Target mode and ``prox`` are decoupled updates and
#: use ``"decoupled"`` when not told.
DEFAULT_COUPLING: Coupling = "coupled"
#: Target mode's bound on one step's shrinkage of any weight with Adam/AdamW (exact control), in units of lr
#: (``max_shrink=None``): without it the exact cut, applied to every kept weight alike once λ sits at its
#: floor, can outrun what Adam's steps give back and shrink the kept weights without end (a fine-tuned ViT
#: at 98% collapsed to chance). With it the matrix's AdamW settings gain on the LeNets and the fine-tuned
#: ViT and lose on the ViT from scratch at 98–99% and the GPT at 90–95% (docs/results/matrix.md, finding 10).
DEFAULT_MAX_SHRINK = 10.0

_SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
_PER_WEIGHT = ("lam", "lam_momentum", "lam_exp_avg_sq")  # λ and its moments: one entry per weight
_DRIVERS: dict[str, Driver] = {"sgd": sgd_step, "adam": adam_step}  # per optimizer family


class HALO(BudgetTerm, ChecksParameterNames, Penalty):
    """Hierarchical Adaptive Lasso (Seto, Wells & Zhang, SDM 2021).

    ``ξ · Σ_j |w_j| / λ_j²  +  ψ · | Σ_j |λ_j| − p |``  (``form="l2"`` squares the last term),

    with one trainable ``λ_j`` per penalised weight, all in one flat parameter ``self.lam`` (in penalised
    parameter order, each tensor flattened). Inside ``[lambda_min, lambda_max]`` value and gradients are
    exactly the paper's; λ is kept in that box, and the penalty reads λ clamped into it, so it stays
    finite whatever happens.

    One penalty, two ways to use it (no flag to choose):

    * **In the loss** (as every PyTorch regulariser): ``loss = task + halo()`` and ``halo.parameters()``
      in any optimizer. λ is brought back into its box at the next ``halo()`` call by itself.
    * **Attached**: ``halo.attach(optimizer)`` (``torch.optim.SGD``, ``Adam`` or ``AdamW``) makes every
      ``optimizer.step()`` apply HALO's analytic gradients and the optimizer's own update of the
      penalised weights, λ and their buffers — and of the optimizer's other parameters — in one compiled
      pass (:mod:`haloprune.penalties.halo.fused`); the loss is just the task loss, and ``halo()`` returns the
      penalty's value, detached, for logging. Gradients of the parameters it updated are ``None`` after
      the step. With SGD the result equals the in-loss formulation up to round-off. With Adam/AdamW,
      ``coupling="coupled"`` (the default, :data:`DEFAULT_COUPLING`) is exactly Adam on
      ``task + halo()`` (λ with its own Adam moments); ``"decoupled"`` (the default of target mode and
      ``prox``, which need it) applies HALO's shrinkage and λ's update as plain gradient steps of size lr
      next to Adam's step on the task loss, as AdamW does with weight decay. ``fused=False`` makes
      ``attach`` only keep λ in its box (the reference formulation, any optimizer).

    **Target sparsity** (``target_sparsity=0.98``, attached): instead of ξ and ψ, give the sparsity you
    want. The zeros follow a cubic ramp to the target over the first ``ramp_end`` of the run's step
    budget ``B`` (``Σ_t lr_t / (1 − momentum)`` with SGD, ``Σ_t lr_t`` with Adam/AdamW: HALO's step is then
    a plain one of size lr); ``ψ = psi_hat / B``. ``target_control="exact"`` (the default) chooses ξ before
    every step so that the proximal step zeroes exactly the ramp's count, lowest ``|w|·λ²`` first, and
    zeroes again any the step revived: the run ends exactly at the target. ``"pi"`` steers ``ξ = c³/ψ²``
    from the density measured every 10 steps
    (:class:`~haloprune.penalties.halo.target.SparsityController`). ``halo.attach(optimizer,
    total_steps=N, scheduler=sched)`` computes ``B``; :meth:`begin_training` takes it directly. The
    shrinkage is applied by its proximal map (``prox=True``), so pruned-to-be weights end exactly at
    zero and the achieved sparsity is the fraction of exact zeros. ``max_shrink`` (exact control, Adam /
    AdamW; None: :data:`DEFAULT_MAX_SHRINK`, 10; ``math.inf``: unbounded, as before 10 was the default):
    the most one step's shrinkage takes from any weight, in units of lr (``ξ ≤ max_shrink·lambda_min²``);
    the zeros the bounded step leaves short are set by the top-up, lowest ``|w|·λ²`` first. Under AdamW λ
    falls to ``lambda_min`` and the exact cut, applied to every kept weight alike, can outrun what Adam's
    steps (about lr) give back (docs/results/matrix.md, finding 10). With SGD it does not apply.
    """

    learns = True
    shards = True
    strengths = ("xi", "psi")
    strengths_from = "target_sparsity"

    @classmethod
    def keyed_defaults(cls, optimizer: str, settings: dict[str, Any]) -> dict[str, Any]:
        """``target_control`` (it was ``"pi"`` until the exact control became the default) and, for the
        exact control with Adam/AdamW, ``max_shrink`` (unbounded until :data:`DEFAULT_MAX_SHRINK`)."""
        keyed: dict[str, Any] = {"target_control": DEFAULT_CONTROL}
        if optimizer in ("adam", "adamw") and (settings.get("target_control") or DEFAULT_CONTROL) == "exact":
            keyed["max_shrink"] = DEFAULT_MAX_SHRINK
        return keyed

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
        target_control: TargetControl | None = None,
        max_shrink: float | None = None,
        step_budget: float | None = None,
        prox: bool = False,
        fused: bool = True,
        coupling: Coupling | None = None,
        lambda_lr_scale: float = 1.0,
        lambda_weight_decay: float | None = None,
        lambda_dtype: LambdaDtype | None = None,
        **selection: Unpack[SelectionArgs],
    ) -> None:
        self.check_options(
            xi=xi,
            psi=psi,
            p=p,
            form=form,
            lambda_init=lambda_init,
            lambda_min=lambda_min,
            lambda_max=lambda_max,
            target_sparsity=target_sparsity,
            psi_hat=psi_hat,
            ramp_end=ramp_end,
            target_control=target_control,
            max_shrink=max_shrink,
            prox=prox,
            fused=fused,
            coupling=coupling,
            lambda_dtype=lambda_dtype,
        )
        self.target: TargetMode | None = None
        if target_sparsity is not None:
            self.target = TargetMode(target_sparsity, psi_hat, ramp_end, target_control or DEFAULT_CONTROL)
            bound = DEFAULT_MAX_SHRINK if max_shrink is None else float(max_shrink)  # inf: unbounded
            # ξ's bound: lr·ξ/λ² ≤ max_shrink·lr down to λ = lambda_min
            self.target.max_shrink = bound * float(lambda_min) ** 2 if bound < math.inf else None
            xi, psi, prox = 0.0, 0.0, True
        elif xi is None or psi is None:
            raise ValueError("give xi and psi, or target_sparsity")
        self.check_acts(xi=xi, psi=psi, target_sparsity=target_sparsity)
        self._init_budget(p, form)
        super().__init__(model, **selection)
        self.xi, self.psi = float(xi), float(psi)
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        if self.target is not None:
            self.target.where = self.layout
            self.target.box = (self.lambda_min, self.lambda_max)
        self.prox = prox
        self.fused = fused
        self.coupling = coupling
        self.lambda_lr_scale = float(lambda_lr_scale)
        self.lambda_weight_decay = lambda_weight_decay
        w0 = self.weights()[0]
        device = w0.device
        # λ in the weights' precision, at least float32 (a float64 model gets float64 λ), or as asked
        dtype = torch.promote_types(w0.dtype, torch.float32)
        if lambda_dtype is not None:
            dtype = getattr(torch, lambda_dtype)
        self.lam = nn.Parameter(
            torch.full((self.num_penalized,), float(lambda_init), device=device, dtype=dtype)
        )
        # λ's momentum (SGD) or first Adam moment (coupled Adam) on the fused path (emptied when attached
        # to Adam decoupled, which steps λ without one); the optimizer keeps them on the in-loss path.
        self.register_buffer("lam_momentum", torch.zeros_like(self.lam, requires_grad=False))
        # λ's second Adam moment (coupled Adam only: empty until then).
        self.register_buffer("lam_exp_avg_sq", torch.zeros(0, device=device, dtype=dtype))
        # Fused steps taken (λ's Adam step count; SGD with dampening initialises buffers on the first).
        self.register_buffer("fused_steps", torch.zeros((), dtype=torch.int64, device=device))
        self.update: FusedUpdate | None = None  # made by attach (fused); None: in the loss
        if step_budget is not None:
            self.begin_training(step_budget)

    @classmethod
    def check_options(cls, **settings: Any) -> None:
        """HALO's rules, written once (the constructor and configs call this; see the class doc)."""
        s = {**cls.defaults(), **settings}
        target = s["target_sparsity"]
        fused_only = "a fused-path update (fused=True, halo.attach(optimizer))"
        if target is not None:
            if s["xi"] or s["psi"]:
                raise ValueError(
                    "target_sparsity sets xi and psi itself (from psi_hat and the step budget): leave xi "
                    "and psi unset (tune psi_hat instead)"
                )
            if not s["fused"]:
                raise ValueError(f"target_sparsity is {fused_only}")
            if s["psi_hat"] <= 0:
                raise ValueError(f"psi_hat must be > 0, got {s['psi_hat']}")
            SparsityController(float(target), ramp_end=float(s["ramp_end"]))  # checks its sparsity, ramp_end
        if s["target_control"] not in (None, *CONTROLS):
            raise ValueError(f"target_control must be one of {CONTROLS}, got {s['target_control']!r}")
        for key in ("target_control", "max_shrink"):
            if s[key] is not None and target is None:
                raise ValueError(f"{key} is a setting of target mode: give target_sparsity too")
        if s["max_shrink"] is not None and not s["max_shrink"] > 0:
            raise ValueError(f"max_shrink must be > 0, got {s['max_shrink']}")
        xi, psi = s["xi"] or 0.0, s["psi"] or 0.0
        if xi < 0 or psi < 0:
            raise ValueError(f"xi and psi must be >= 0, got xi={xi}, psi={psi}")
        if not 0 < s["lambda_min"] <= s["lambda_init"] <= s["lambda_max"]:
            raise ValueError(
                "need 0 < lambda_min <= lambda_init <= lambda_max, got "
                f"{s['lambda_min']}, {s['lambda_init']} and {s['lambda_max']}"
            )
        if s["prox"] and not s["fused"]:
            raise ValueError(f"prox=True is {fused_only}")
        if s["lambda_dtype"] not in (None, "float32", "bfloat16"):
            raise ValueError(f"lambda_dtype must be 'float32' or 'bfloat16', got {s['lambda_dtype']!r}")
        if s["lambda_dtype"] == "bfloat16" and not s["fused"]:
            raise ValueError(
                "lambda_dtype='bfloat16' is a fused-path option (λ is rounded stochastically inside the "
                "fused step): fused=True and halo.attach(optimizer)"
            )
        if s["coupling"] not in (None, "coupled", "decoupled"):
            raise ValueError(f"coupling must be 'coupled' or 'decoupled', got {s['coupling']!r}")
        if s["coupling"] == "coupled" and (s["prox"] or target is not None):
            raise ValueError(
                "prox and target_sparsity with Adam/AdamW are decoupled updates (a plain proximal step "
                "of size lr): leave coupling unset or 'decoupled'"
            )

    # ----------------------------------------------------------------------------- target mode

    @property
    def controller(self) -> SparsityController | None:
        """Target mode's controller (``None`` for fixed ξ and ψ)."""
        return self.target.controller if self.target is not None else None

    @property
    def step_budget(self) -> float | None:
        """Target mode's step budget ``B``, once known."""
        return self.target.step_budget if self.target is not None else None

    def begin_training(self, step_budget: float) -> None:
        """Tell the penalty the run's step budget ``B`` (target mode needs it): ``Σ_t lr_t / (1 − momentum)``
        with SGD, ``Σ_t lr_t`` with Adam/AdamW. ``attach(optimizer, total_steps=N)`` calls it for you."""
        if self.target is None:
            return
        self.target.begin(step_budget)
        self._set_strengths()

    def control(self, ws: Tensors, step_size: float, lr: float) -> None:
        """Before each fused step (``step_size``: its share of the step budget; ``lr``: the weights' lr):
        target mode accounts for it and, when due, sets ξ (no-op without target mode)."""
        lams = self.update.plan.lams if self.update is not None and self.update.plan is not None else None
        if self.target is not None and self.target.control(ws, self._lam_squared, step_size, lr, lams):
            self._set_strengths()

    def _set_strengths(self) -> None:
        """ξ and ψ from target mode, into the fused update's tensors too."""
        assert self.target is not None
        self.xi, self.psi = self.target.strengths()
        if self.update is not None:
            self.update.set_strengths(self.xi, self.psi)

    def get_extra_state(self) -> dict[str, Any]:
        state = super().get_extra_state()
        if self.target is not None:
            state["controller"] = self.target.controller.state()
            state["step_budget"] = self.target.step_budget
            state["exact_xi"] = self.target.xi
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        if self.target is not None and "controller" in state:
            self.target.controller.load(state["controller"])
            self.target.xi = float(state.get("exact_xi", 0.0))
            if state.get("step_budget") is not None:
                self.begin_training(state["step_budget"])

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """Sharded (FSDP2): λ and each of its moments in use as one entry per penalised weight,
        ``lam.<parameter name>``, a ``DTensor`` sharded like the weight (what a distributed checkpoint
        saves and reshards); otherwise the flat tensors."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._sharded is None:
            return
        for name in _PER_WEIGHT:
            flat = destination.pop(prefix + name)
            if not flat.numel():  # a moment not in use: empty, as unsharded
                destination[prefix + name] = flat
                continue
            for n, t in self.per_weight(flat.detach()).items():
                destination[f"{prefix}{name}.{n}"] = t

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # per-weight entries (see _save_to_state_dict; whole ones: a sharded run's state gathered, loaded
        # by a sharded model or an unsharded one) back into flat ones
        state_dict = dict(state_dict)
        for name in _PER_WEIGHT:
            keys = {n: f"{prefix}{name}.{n}" for n in self.param_names}
            if all(k in state_dict for k in keys.values()):
                state_dict[prefix + name] = self.flat_of({n: state_dict.pop(k) for n, k in keys.items()})
        # λ's moments are empty where the run that saved them had no use for them (see attach)
        for name in ("lam_momentum", "lam_exp_avg_sq"):
            saved = state_dict.get(prefix + name)
            resized = saved is not None and saved.shape != getattr(self, name).shape
            if resized and saved.numel() in (0, self.num_penalized):
                setattr(self, name, self.lam.new_zeros(saved.shape, requires_grad=False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def per_weight(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A tensor laid out like λ (this process's blocks, flat) as one tensor per penalised weight,
        shaped and — for a sharded model — sharded like it (``DTensor`` s: what a distributed checkpoint
        saves and reshards). Views of ``flat``."""
        blocks = views(flat, self.numels, self.shapes)
        params = self.penalised_parameters()
        return {n: like(b, p) for n, b, p in zip(self.param_names, blocks, params, strict=True)}

    def flat_of(self, entries: dict[str, torch.Tensor]) -> torch.Tensor:
        """The inverse of :meth:`per_weight`: one tensor per penalised weight — each sharded like it, or
        whole (a gathered state dict) — back to one flat tensor of this process's blocks."""
        params = self.penalised_parameters()
        blocks = [local(shard_like(entries[n], p)) for n, p in zip(self.param_names, params, strict=True)]
        return torch.cat([b.flatten() for b in blocks])

    def state_bytes_per_weight(self) -> float:
        """Bytes HALO keeps per penalised weight: λ and, as attached, its moments."""
        tensors = (self.lam, self.lam_momentum, self.lam_exp_avg_sq)
        return sum(t.numel() * t.element_size() for t in tensors) / self.num_penalized

    # ----------------------------------------------------------------------------- the penalty

    def lambdas(self) -> dict[str, torch.Tensor]:
        """λ per penalised parameter, shaped like it (views into ``self.lam``; sharded: this process's
        blocks)."""
        return dict(zip(self.param_names, views(self.lam, self.numels, self.shapes), strict=True))

    @property
    def attached(self) -> bool:
        """True once :meth:`attach` has hooked the fused update into an optimizer."""
        return self.update is not None

    @property
    def in_loss(self) -> bool:
        return not self.attached

    def forward(self, model: nn.Module | None = None) -> torch.Tensor:
        if self.attached:
            with torch.no_grad():
                return self._value(model)
        if self.target is not None or self.prox:
            raise RuntimeError(
                "target_sparsity and prox are HALO updates inside optimizer.step(): call "
                "halo.attach(optimizer) (target mode: halo.attach(optimizer, total_steps=N)) first"
            )
        if self.lam.dtype == torch.bfloat16:
            raise RuntimeError(
                "lambda_dtype='bfloat16' needs the fused step (λ rounded stochastically): call "
                "halo.attach(optimizer) and leave halo() out of the loss"
            )
        if torch.is_grad_enabled():
            self._project_if_needed()
        return self._value(model)

    def _value(self, model: nn.Module | None) -> torch.Tensor:
        """The paper's formula, through autograd."""
        w_abs = torch.cat([w.abs().flatten() for w in self.weights(model)])
        lam = read(self.lam)  # bfloat16 λ is read in float32
        shrink = (w_abs.to(lam.dtype) / lam.clamp(self.lambda_min, self.lambda_max).square()).sum()
        # sharded (FSDP2): sums over every process's blocks, each process differentiating its own
        shrink, lam_sum = summed(shrink, self.layout), summed(lam.abs().sum(), self.layout)
        return self.xi * shrink + self.psi * self.budget_term(lam_sum)

    @torch.no_grad()
    def _project_if_needed(self) -> None:
        """In the loss, λ is stepped by the user's optimizer: put it back into its box before it is read
        (only when it left it, so a graph built from the current λ stays valid)."""
        lam = self.lam.detach()
        if bool(((lam < self.lambda_min) | (lam > self.lambda_max)).any()):  # one device sync, not two
            self.project_()

    @torch.no_grad()
    def project_(self) -> None:
        self.lam.clamp_(self.lambda_min, self.lambda_max)

    # ----------------------------------------------------------------------------- attaching

    def attach(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int | None = None,
        scheduler: Any = None,
        scheduler_every: int = 1,
    ) -> Any:
        """Hook HALO into ``optimizer.step()``; returns the removable hook handle.

        Fused (default): a pre-step hook performs HALO's update of the penalised weights and λ together
        with the optimizer's own (SGD, Adam or AdamW), and that of the optimizer's other parameters.
        ``fused=False``: a post-step hook only clamps λ back into range (any optimizer; add ``halo()``
        to the loss and ``halo.parameters()`` to the optimizer).

        ``total_steps`` (with the ``scheduler`` that sets the lr per step, if any): the optimizer steps of
        the run still to come, from which the target mode's step budget is computed (the scheduler is
        stepped on a copy of its state and restored), stepped once per ``scheduler_every`` optimizer
        steps (the steps per epoch for a scheduler stepped per epoch).
        """
        if scheduler is not None and total_steps is None:
            raise ValueError("scheduler= needs total_steps= (the number of optimizer steps of the run)")
        if not self.fused:
            handle = super().attach(optimizer)
        else:
            family = check_optimizer(optimizer, _SUPPORTED)
            coupled = self._resolve_coupling(family)
            self.update = FusedUpdate(self, family, coupled, _DRIVERS[family])
            # λ's moments, only where the fused step reads them: SGD's momentum, coupled Adam's two
            adam = family == "adam"
            self._size_buffer("lam_momentum", not adam or coupled)
            self._size_buffer("lam_exp_avg_sq", adam and coupled)
            self.project_()
            handle = optimizer.register_step_pre_hook(self._pre_step)
        if self.target is not None and self.update is not None:
            self.target.use_gains(self.update.family)
        if total_steps is not None and self.target is not None:
            w0 = self.penalised_parameters()[0]
            sgd = self.update is not None and self.update.family == "sgd"
            self.begin_training(step_budget(optimizer, total_steps, scheduler, w0, sgd, scheduler_every))
        return handle

    def _size_buffer(self, name: str, needed: bool) -> None:
        """Allocate λ's moment buffer ``name`` (zeros) if ``needed`` and empty; free it if not needed."""
        buffer = getattr(self, name)
        if needed and buffer.numel() == 0:
            setattr(self, name, torch.zeros_like(self.lam, requires_grad=False))
        elif not needed and buffer.numel():
            setattr(self, name, self.lam.new_zeros(0, requires_grad=False))

    def _resolve_coupling(self, family: str) -> bool:
        if family == "sgd":
            if self.coupling is not None:
                raise ValueError(
                    "coupling applies to Adam/AdamW; with SGD HALO's gradient goes through SGD's momentum "
                    "as in the paper (leave coupling unset)"
                )
            return True
        proximal = self.prox or self.target is not None  # coupled with these is refused at construction
        return (self.coupling or ("decoupled" if proximal else DEFAULT_COUPLING)) == "coupled"

    def _pre_step(
        self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        """The pre-step hook. ``optimizer.step(closure)`` (PyTorch Lightning's automatic optimisation,
        any loop that passes a closure) computes the gradients *inside* ``step()``, after pre-step hooks:
        the closure is run here first (with gradients enabled, as ``torch.optim`` does), then HALO's fused
        step, and ``step()`` is handed a closure that returns the loss already computed."""
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._step(optimizer)
            return None
        with torch.enable_grad():
            loss = closure()
        self._step(optimizer)
        return args[:1], {**kwargs, "closure": lambda: loss}

    def _step(self, optimizer: torch.optim.Optimizer) -> None:
        assert self.update is not None
        self.update.step(optimizer)
        if self.target is not None:
            assert self.update.plan is not None  # made by the step
            self.target.after_step(self.update.plan.ws, self._lam_squared, self.update.plan.lams)

    def _lam_squared(self) -> torch.Tensor:
        """λ², read and clamped as the fused step reads it (target mode's exact control scores by it)."""
        return lam_squared(self.lam.detach(), self.lambda_min, self.lambda_max)

    # ----------------------------------------------------------------------------- logging

    def stats(self) -> dict[str, float]:
        """λ's mean, smallest, 1st / 50th / 99th percentile and share at its floor (over all processes'
        λ for a sharded model: the same on every process), and target mode's state."""
        lam = self.lam.detach().float()
        where = self.layout
        parts = [lam.numel(), lam.sum(), (lam <= self.lambda_min).sum()]
        sums = total(torch.tensor(parts, dtype=torch.float64, device=lam.device), where)
        n = int(sums[0])
        q = [kth_smallest(lam, max(1, min(n, round(f * n))), where=where) for f in (0.0, 0.01, 0.5, 0.99)]
        return {
            "lambda_mean": float(sums[1]) / n,
            "lambda_min": q[0],
            "lambda_p01": q[1],
            "lambda_median": q[2],
            "lambda_p99": q[3],
            "lambda_at_floor": float(sums[2]) / n,
            **(self.target.stats(self.xi, self.psi) if self.target is not None else {}),
        }

    def extra_repr(self) -> str:
        return (
            f"xi={self.xi:g}, psi={self.psi:g}, p={self.p:g}, form={self.form!r}, "
            f"lambda_min={self.lambda_min:g}, lambda_max={self.lambda_max:g}, fused={self.fused}, "
            f"prox={self.prox}, target_sparsity="
            f"{self.controller.sparsity if self.controller else None}, penalized={self.num_penalized}"
        )
