"""Target-sparsity control for HALO: ask for ``sparsity=0.98`` instead of searching (ξ, ψ) per target.

Why a controller. Once λ has settled at its equilibrium λ* = (2ξ|w|/ψ)^(1/3), HALO's penalty on a weight is
``1.89·c·|w|^(1/3)`` with ``c = (ξψ²)^(1/3)``: the network picks its own density from ``c``, and the ``c``
that yields a given density depends on the model, the data and the schedule. So ``c`` is steered during
training from the measured density, and ``ψ`` only sets how fast λ reaches its equilibrium.

Scale-free units. λ moves by about ``ψ·B`` over a run, where ``B = Σ_t lr_t / (1 − momentum)`` is the
*step budget* (the total distance SGD with momentum can travel per unit gradient). So ψ is given as
``psi_hat = ψ·B`` (λ can travel ``psi_hat`` units over the run) and ``c`` as ``c_hat = c·B``; the same
defaults then hold for any dataset size, batch size, epoch count and learning rate. Progress through
training is measured in the same units: the fraction of ``B`` spent so far.

The loop. Every ``every`` steps the density ``d`` (fraction of penalised weights that are nonzero: with
the proximal update dead weights are exactly zero) is compared with a target density that falls from 1
to ``1 − sparsity`` along a cubic ramp that ends when ``ramp_end`` of the budget is spent (Zhu & Gupta's
schedule, here a *target* for the penalty rather than a pruning mask). With the error
``e = log(d / d_target)``, ``log c = u + kp·e`` and ``u`` grows by ``ki·e`` per unit of budget spent: a PI
controller in log space (as fast at 99.5% as at 90%) whose rates are in budget units too, so a 5x longer
schedule is steered exactly like a short one.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from haloprune.core.schedules import cubic_sparsity
from haloprune.core.sharded import Layout, kth_smallest, total_counts
from haloprune.penalties.halo.cut import COMPILED_FROM, Cuts

_MAX_ERROR = 3.0  # |log(d / d_target)| counted at most (a factor e³ ≈ 20 in density)
_MAX_STEP = 0.5  # most the integral part of log c moves in one update
_MAX_RANGE = 15.0  # the integral part stays within e^±15 of its start


#: The controller's gains per optimizer family, set by ``HALO.attach``.
#:
#: ``too_sparse``: with SGD dead weights regrow far less easily than live ones die, so overshoot is
#: corrected 5x harder. With Adam/AdamW a dead weight's task step is normalised, so it regrows as soon as
#: ξ falls: that asymmetric gain swings the density through the target and can empty a layer (Fashion-MNIST
#: LeNet-300-100, AdamW lr 1e-3, 3 epochs: 5 killed the network, 1 ended at 98.7% for 98%).
#:
#: ``kp``: for the same reason the density of an Adam-trained network answers a change of ``c`` at once
#: and steeply (a dead weight's threshold ``lr·ξ/λ_min²`` goes as ``c³``), so SGD's proportional gain of 1
#: put the ViT of configs/paper/fmnist-vit.toml (AdamW, 80%) into a limit cycle: ``c`` swung 10x and the
#: density between 6% and 64% every epoch to the end, and the network lost 3 points to GMP (validation
#: 84.66%). With 0.25 the density follows the ramp, ``c`` moves by at most 20% once the target is held,
#: and the same run reaches 86.88% (ki 5 instead of 20: 87.22%, but the 240-step AdamW test run then
#: ends at 79.8% for 90%; docs/results/transformers.md).
GAINS: dict[str, dict[str, float]] = {
    "sgd": {"kp": 1.0, "ki": 20.0, "too_sparse": 5.0},
    "adam": {"kp": 0.25, "ki": 20.0, "too_sparse": 1.0},
}


@dataclass
class SparsityController:
    """Steers HALO's strength ``c`` so that the trained network has ``sparsity`` exactly-zero weights."""

    sparsity: float
    ramp_end: float = 0.75  # fraction of the step budget by which the target density is reached
    ki: float = 20.0  # integral gain: change of log c per unit of budget, per unit of log(d / d_target)
    kp: float = 1.0  # proportional gain
    too_sparse: float = 5.0  # gains are multiplied by this when the density is below target (with SGD
    # weights die much more easily than they regrow, so overshoot is corrected harder than undershoot)
    # (attached, kp, ki and too_sparse are those of the optimizer family: see GAINS)
    every: int = 10  # steps between updates
    c_hat_init: float = 0.02  # c·B at the start: weak, the controller raises it
    # state (saved in the penalty's state_dict)
    integral: float = math.nan  # u: the integral part of log(c·B)
    log_c_hat: float = math.nan
    last_spent: float = 0.0
    spent: float = 0.0  # step budget spent so far (Σ lr_t / (1 − momentum))
    steps: int = 0
    density: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"target sparsity must be in (0, 1), got {self.sparsity}")
        if not 0.0 < self.ramp_end <= 1.0:
            raise ValueError(f"ramp_end must be in (0, 1], got {self.ramp_end}")
        if self.ki <= 0 or self.kp < 0 or self.every < 1 or self.c_hat_init <= 0:
            raise ValueError("need ki > 0, kp >= 0, c_hat_init > 0 and every >= 1")
        if math.isnan(self.integral):
            self.integral = self.log_c_hat = math.log(self.c_hat_init)

    def target_density(self, progress: float) -> float:
        """Density asked for when ``progress`` (fraction of the step budget) is spent: a cubic ramp."""
        return 1.0 - cubic_sparsity(progress, self.sparsity, 0.0, self.ramp_end)

    def step(self, step_size: float) -> bool:
        """Account for one optimizer step of size ``lr / (1 − momentum)``; True when it is time to measure."""
        self.spent += step_size
        self.steps += 1
        return self.steps % self.every == 0

    def update(self, density: float, budget: float) -> None:
        """One control step from the measured ``density``."""
        self.density = density
        wanted = self.target_density(self.spent / budget)
        error = min(max(math.log(max(density, 1e-12) / wanted), -_MAX_ERROR), _MAX_ERROR)
        if error < 0:
            error *= self.too_sparse
        elapsed = (self.spent - self.last_spent) / budget
        self.last_spent = self.spent
        # Rate and range limits: inert in a run with many updates, they keep a run with only a handful
        # (a few dozen steps) from swinging c by orders of magnitude in one update.
        step = min(max(self.ki * error * elapsed, -_MAX_STEP), _MAX_STEP)
        home = math.log(self.c_hat_init)
        self.integral = min(max(self.integral + step, home - _MAX_RANGE), home + _MAX_RANGE)
        self.log_c_hat = self.integral + self.kp * error

    def c(self, budget: float) -> float:
        return math.exp(self.log_c_hat) / budget

    def state(self) -> dict[str, Any]:
        return asdict(self)

    def load(self, state: dict[str, Any]) -> None:
        for key in ("integral", "log_c_hat", "last_spent", "spent", "steps", "density"):
            setattr(self, key, type(getattr(self, key))(state[key]))


def lr_trajectory(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    scheduler: Any = None,
    param: Any = None,
    every: int = 1,
) -> list[float]:
    """The learning rate of ``param``'s group (default: the first group) at each of the next
    ``total_steps`` optimizer steps, as ``scheduler`` will set it, stepped once per ``every`` optimizer
    steps (1: per step; the steps per epoch for a scheduler stepped per epoch).

    The scheduler is stepped on its own state, which is then restored with the groups' hyperparameters,
    so nothing changes for the run. A scheduler driven by metrics (``ReduceLROnPlateau``) cannot be
    foreseen: give the budget to :meth:`HALO.begin_training` yourself.
    """
    return [lr for lr, _ in _trajectory(optimizer, total_steps, scheduler, param, every)]


def _trajectory(
    optimizer: torch.optim.Optimizer, total_steps: int, scheduler: Any, param: Any, every: int = 1
) -> list[tuple[float, float]]:
    """``(lr, momentum)`` of ``param``'s group at each of the next ``total_steps`` steps (momentum 0 for
    groups without one; ``OneCycleLR`` cycles it), the scheduler stepped once per ``every`` steps."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
        raise ValueError(f"every must be a positive int (optimizer steps per scheduler step), got {every!r}")
    groups = optimizer.param_groups
    index = next((i for i, g in enumerate(groups) if any(p is param for p in g["params"])), 0)

    def now() -> tuple[float, float]:
        g = groups[index]
        return float(g["lr"]), float(g.get("momentum", 0.0))

    if scheduler is None:
        return [now()] * total_steps
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError(
            "ReduceLROnPlateau sets the lr from metrics, which cannot be foreseen: compute the step "
            "budget yourself and call halo.begin_training(step_budget)"
        )
    owner = getattr(scheduler, "optimizer", optimizer)
    owner = getattr(owner, "optimizer", owner)  # a wrapper holding it (accelerate's AcceleratedOptimizer)
    if owner is not optimizer:
        raise ValueError("the scheduler belongs to another optimizer")
    saved = copy.deepcopy(scheduler.state_dict())
    hyper = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in groups]
    out = []
    try:
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore")
            calls = -(-total_steps // every)
            for t in range(calls):
                out.extend([now()] * min(every, total_steps - t * every))
                if t + 1 < calls:
                    scheduler.step()
    finally:
        scheduler.load_state_dict(saved)
        for g, h in zip(groups, hyper, strict=True):
            g.update(h)
    return out


def step_budget(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    scheduler: Any = None,
    param: Any = None,
    momentum: bool = False,
    every: int = 1,
) -> float:
    """``B = Σ_t lr_t / (1 − m_t)`` over the next ``total_steps`` steps (see :func:`lr_trajectory`, and
    ``every`` there): how far HALO's update can move λ per unit of steady gradient. ``momentum``: count
    SGD's momentum ``m_t`` (as the scheduler sets it, e.g. ``OneCycleLR``); with Adam/AdamW HALO's step is
    a plain one of size lr (decoupled), so ``m_t = 0``."""
    steps = _trajectory(optimizer, total_steps, scheduler, param, every)
    return sum(lr / (1.0 - m) if momentum else lr for lr, m in steps)


def _counts(weights: list[torch.Tensor], where: Layout) -> tuple[int, int]:
    """How many entries ``weights`` have and how many are nonzero, over all processes (``weights``: this
    process's blocks); one device sync, and no pass that builds |w| (most steps need only the counts)."""
    nonzero = torch.stack([torch.count_nonzero(t.detach()) for t in weights]).sum()
    n, count = total_counts([sum(t.numel() for t in weights), int(nonzero)], where, nonzero.device)
    return n, count


def _versions(weights: list[torch.Tensor]) -> tuple[int, ...]:
    return tuple(t._version for t in weights)


def _magnitudes(weights: list[torch.Tensor]) -> torch.Tensor:
    """``|w|`` of ``weights``, flat, in their order."""
    return torch.cat([t.detach().abs().flatten() for t in weights])


#: How target mode sets ξ: ``"exact"`` (the default) chooses ξ before every step so that the proximal
#: step zeroes exactly the weights the ramp asks for, lowest ``|w|·λ²`` first (see
#: :meth:`TargetMode._exact_xi`); ``"pi"`` steers ``c`` with :class:`SparsityController`'s PI loop from the
#: density measured every 10 steps (overshoots with Adam-family optimizers: docs/results/target-exact.md);
#: ``"hard"`` follows the same ramp with ξ = 0 — no shrinkage of the kept weights: after every step the
#: weights of lowest ``|w|·λ²`` are zeroed to the ramp's count (with ξ = 0 λ falls alike for every weight,
#: so that is the magnitude's order: a schedule to measure HALO's shrinkage against; docs/results/matrix.md).
CONTROLS = ("exact", "pi", "hard")
DEFAULT_CONTROL = "exact"


class TargetMode:
    """HALO's target mode, whole: the sparsity asked for, the :class:`SparsityController` that follows the
    ramp of target densities, and the strengths once the run's step budget ``B`` is known: ``ψ = psi_hat /
    B`` and ξ from the control (``"pi"``: ``ξ = c³ / ψ²`` with ``c`` steered; ``"exact"``: the threshold
    that leaves the ramp's density, chosen every step). The penalty holds one and asks it for ξ and ψ."""

    def __init__(
        self, sparsity: float, psi_hat: float, ramp_end: float, control: str = DEFAULT_CONTROL
    ) -> None:
        self.controller = SparsityController(float(sparsity), ramp_end=float(ramp_end))
        if control != "pi":
            self.controller.every = 1  # the ramp's count is followed at every step
        self.psi_hat = float(psi_hat)
        self.step_budget: float | None = None
        self.control_kind = control
        self.xi = 0.0  # "exact": the ξ chosen before the last step ("hard": 0)
        self.max_shrink: float | None = None  # "exact" with Adam/AdamW: the largest ξ (max_shrink·λ_min²)
        self.family = "sgd"  # the optimizer family (use_gains)
        self.wanted = 0  # "exact", "hard": the zeros the ramp asks for at the last step
        self._near: dict[str, float] = {}  # the last cuts, hints for kth_smallest (not state)
        self.where = Layout()  # how the weights are spread over processes (set by the penalty)
        self.box = (1e-3, 1e3)  # λ's bounds (set by the penalty): scores read λ as the fused step does
        self._cuts = Cuts()  # the compiled passes (haloprune.penalties.halo.cut), for large enough models
        self._known: tuple[list[torch.Tensor], tuple[int, ...], int, int] | None = None  # the weights, their
        # versions, and (entries, nonzero) as the last top-up left them: the next step's count if unchanged

    def use_gains(self, family: str) -> None:
        """The controller's gains for an optimizer family (``"sgd"``, ``"adam"``; see :data:`GAINS`)."""
        self.family = family
        for gain, value in GAINS[family].items():
            setattr(self.controller, gain, value)

    def begin(self, step_budget: float) -> None:
        """The run's step budget ``B`` (see :func:`step_budget`)."""
        if not step_budget > 0 or not math.isfinite(step_budget):
            raise ValueError(f"step budget must be a positive number, got {step_budget}")
        self.step_budget = float(step_budget)

    def strengths(self) -> tuple[float, float]:
        """``(ξ, ψ)``: for the controller's current ``c`` (``"pi"``), or the ξ last chosen (``"exact"``,
        ``"hard"``)."""
        if self.step_budget is None:
            raise RuntimeError("target mode has no step budget yet (begin(step_budget) first)")
        psi = self.psi_hat / self.step_budget
        if self.control_kind != "pi":
            return self.xi, psi
        return self.controller.c(self.step_budget) ** 3 / psi**2, psi

    def _exact_xi(
        self,
        weights: list[torch.Tensor],
        lam_squared: Callable[[], torch.Tensor],
        lr: float,
        lams: list[torch.Tensor] | None = None,
    ) -> None:
        """``"exact"``: choose ξ for the coming step so that its proximal step zeroes the ramp's share.

        The step soft-thresholds a weight ``w`` by ``lr·ξ/λ²``: it ends at zero iff ``|w|·λ²/lr ≤ ξ`` (for
        the weight after the task's step; the weight before it stands in). So with ``k`` zeros wanted of
        ``n`` (``1 −`` the ramp's density at the budget spent), ξ is the ``k``-th smallest ``|w|·λ²``
        divided by ``lr``: HALO's learned λ, not the magnitude alone, decides which weights go, and the
        count cannot overshoot the ramp (0 zeros wanted: ξ = 0, no shrinkage). ``lam_squared()`` gives
        ``λ²`` (flat, in penalised-parameter order), asked for only when a cut is chosen; ``lams`` (λ per
        weight tensor, shaped like it), where given, lets the compiled passes of
        :mod:`~haloprune.penalties.halo.cut` find it (the same cut). ``"hard"``: the ramp's count only,
        ξ = 0."""
        assert self.step_budget is not None
        ctrl = self.controller
        n, nonzero = self._count(weights)
        ctrl.density = nonzero / n
        k = self.wanted = n - round(ctrl.target_density(ctrl.spent / self.step_budget) * n)
        if self.control_kind == "hard" or k <= n - nonzero or lr <= 0:  # (enough zeros: the cut is 0)
            self.xi = 0.0
            return
        if self._compiled(lams, n):
            assert lams is not None
            self._cuts.scores(weights, lams, self.box, zeros_last=False, name="xi")
            cut, _ = self._cuts.kth(k, value=True, name="xi")
        else:
            scale = lam_squared()
            score = _magnitudes(weights).to(scale.dtype) * scale
            cut = self._near["xi"] = self._kth(score, k, "xi")
        self.xi = cut / lr
        if self.max_shrink is not None and self.family == "adam":  # the top-up sets what this leaves short
            self.xi = min(self.xi, self.max_shrink)

    def _kth(self, score: torch.Tensor, k: int, hint: str) -> float:
        """The ``k``-th smallest of the scores of all processes (this one's: ``score``)."""
        return kth_smallest(score, k, self._near.get(hint), self.where)

    def _compiled(self, lams: list[torch.Tensor] | None, n: int) -> bool:
        """Whether the cuts are found by the compiled passes: given λ per tensor, not sharded, compiling
        on, and at least :data:`~haloprune.penalties.halo.cut.COMPILED_FROM` weights."""
        return (
            lams is not None
            and self.where.group is None
            and n >= COMPILED_FROM
            and self._cuts.launches.enabled
        )

    def _count(self, weights: list[torch.Tensor]) -> tuple[int, int]:
        """:func:`_counts`, or what the last top-up left where nothing has written to ``weights`` since:
        their version counters, which every in-place write through them or a view of them bumps, are
        those it left (never when sharded: every process takes part in a count)."""
        known = self._known
        if known is not None and known[0] is weights and known[1] == _versions(weights):
            return known[2], known[3]
        return _counts(weights, self.where)

    @torch.no_grad()
    def _top_up(
        self,
        weights: list[torch.Tensor],
        lam_squared: Callable[[], torch.Tensor],
        lams: list[torch.Tensor] | None = None,
    ) -> None:
        """``"exact"`` and ``"hard"``, after the step: weights the step revived (an Adam step moves a zero
        weight by about lr) leave fewer zeros than wanted; the nonzero weights of smallest ``|w|·λ²`` are set
        to zero until the ramp's count is met (ties may add a few more). ``lam_squared`` and ``lams`` as for
        :meth:`_exact_xi`."""
        self._known = None
        n = sum(t.numel() for t in weights)
        if self._compiled(lams, n):
            assert lams is not None
            nonzero = self._cuts.scores(weights, lams, self.box, zeros_last=True, name="top_up")
            missing = self.wanted - (n - nonzero)
            if missing > 0:
                cut, zeroed = self._cuts.kth(missing, value=False, name="top_up")
                self._cuts.zero(weights, lams, self.box, cut)
                nonzero = nonzero - zeroed if zeroed is not None else -1
            if nonzero >= 0:
                self._known = (weights, _versions(weights), n, nonzero)
            return
        n, nonzero = _counts(weights, self.where)
        missing = self.wanted - (n - nonzero)
        if missing <= 0:
            return
        scale = lam_squared()
        w = _magnitudes(weights)
        score = (w.to(scale.dtype) * scale).masked_fill_(w == 0, float("inf"))
        cut = self._near["top_up"] = self._kth(score, missing, "top_up")
        for t, s in zip(weights, score.split([t.numel() for t in weights]), strict=True):
            t.masked_fill_((s <= cut).view_as(t), 0.0)

    def control(
        self,
        weights: list[torch.Tensor],
        lam_squared: Callable[[], torch.Tensor],
        step_size: float,
        lr: float,
        lams: list[torch.Tensor] | None = None,
    ) -> bool:
        """Before an optimizer step (``step_size``: its share of the budget, ``lr / (1 − momentum)`` or
        ``lr``; ``lr``: the weights' lr; ``lams`` as for :meth:`_exact_xi`): count it in the budget spent,
        then set ξ for it — ``"pi"``: steer
        ``c`` from the density of ``weights`` when the controller is due; ``"exact"``: :meth:`_exact_xi`
        (``lam_squared()`` gives λ², asked for only then). True if ξ changed."""
        if self.step_budget is None:
            raise RuntimeError(
                "target_sparsity: give the run's length, halo.attach(optimizer, total_steps=N, "
                "scheduler=sched), or call halo.begin_training(step_budget) before training"
            )
        due = self.controller.step(step_size)
        if self.control_kind != "pi":
            self._exact_xi(weights, lam_squared, lr, lams)
            return True
        if not due:
            return False
        n, nonzero = _counts(weights, self.where)
        self.controller.update(nonzero / n, self.step_budget)
        return True

    def after_step(
        self,
        weights: list[torch.Tensor],
        lam_squared: Callable[[], torch.Tensor],
        lams: list[torch.Tensor] | None = None,
    ) -> None:
        """After an optimizer step: ``"exact"`` and ``"hard"`` top up the zeros the step revived
        (:meth:`_top_up`; ``lams`` as for :meth:`_exact_xi`)."""
        if self.control_kind != "pi":
            self._top_up(weights, lam_squared, lams)

    def stats(self, xi: float, psi: float) -> dict[str, float]:
        """ξ, ψ, c·B, the density last measured and the target density now, the share of the budget spent."""
        ctrl, budget = self.controller, self.step_budget
        if budget is None:
            return {}
        c_hat = math.exp(ctrl.log_c_hat) if self.control_kind == "pi" else (xi * psi**2) ** (1 / 3) * budget
        return {
            "xi": xi,
            "psi": psi,
            "c_hat": c_hat,
            "density": ctrl.density,
            "target_density": ctrl.target_density(ctrl.spent / budget),
            "budget_spent": ctrl.spent / budget,
        }
