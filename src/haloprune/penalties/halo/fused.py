"""HALO's fast path: what the fused optimizer steps share.

The reference formulation adds ``ξ Σ|w|/λ² + ψ|Σ|λ| − p|`` to the loss and lets autograd and the
optimizer do the rest: about ten extra passes over memory per step, which doubles the step time of a small
network. The fused steps apply the analytic gradients

    ∂/∂w = ξ sign(w) / λ²        ∂/∂λ = −2ξ |w| / λ³  +  ψ sign(λ) · s     (λ ≥ λ_min > 0, so sign(λ) = 1),
    s = sign(Σ|λ| − p)  (form "l1")   or   2 (Σ|λ| − p)  (form "l2")

inside ``optimizer.step()`` together with exactly the update the optimizer would make, for the penalised
weights, their λ and the optimizer's other parameters, in one function per optimizer family
(:mod:`~haloprune.penalties.halo.sgd`, :mod:`~haloprune.penalties.halo.adam`) that ``torch.compile``
turns into a single loop per tensor. This module holds what they share: running the kernels
(compiled on first use, then entered without guards: :mod:`~haloprune.penalties.halo.launch`),
checking the optimizer, the :class:`FusedUpdate` that ``HALO.attach`` creates and the penalty owns
(optimizer family, coupling, the per-optimizer :class:`Plan` of tensors and
hyperparameters), the :class:`StepValues` every kernel takes, and the math both kernels do alike
(:func:`lam_terms`, :func:`soft_threshold`). The drivers read the penalty only through
:class:`Penalised` (its λ, its buffers and settings): this module and the drivers never import it.
A new optimizer family is one more module like ``sgd.py``: a kernel and a driver built on these pieces.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from haloprune.core.sharded import Layout, is_sharded, local, total
from haloprune.penalties.halo.launch import Kernel, Launches, identity, launch

Tensors = list[torch.Tensor]


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


def read(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the fused step computes with it: in its own precision, at least float32 (bfloat16 λ and
    moments are read in float32, whatever the weights' precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def store(
    dst: torch.Tensor, value: torch.Tensor, seed: torch.Tensor | int | None = None, salt: int = 0
) -> None:
    """``dst.copy_(value)``; with a ``seed`` (HALO's own λ and moments), into a bfloat16 ``dst`` with
    stochastic rounding: rounded up with probability equal to the fraction of the bfloat16 step it lies
    above the value below, so the rounding is unbiased and an update far smaller than bfloat16's
    resolution (about 0.4% of λ) still moves λ by its expected amount. The random bits are a counter-based
    hash of the element's index, ``seed`` (the step count: the same run rounds the same way, and resumes
    exactly) and ``salt`` (which tensor): a few integer operations fused into the kernel, where a
    random-number generator would double a CPU step. Without a seed (the optimizer's own buffers) the copy
    rounds as ``torch.optim`` does."""
    if seed is not None and dst.dtype == torch.bfloat16:
        value = value.float()
        bits = value.view(torch.int32)
        value = ((bits + _noise16(value, seed, salt)) & -65536).view(torch.float32)  # exact in bfloat16
    dst.copy_(value)


_MASK32 = 0xFFFFFFFF


def _noise16(like: torch.Tensor, seed: torch.Tensor | int, salt: int) -> torch.Tensor:
    """16 pseudo-random bits per element of ``like`` (int32 in [0, 65536)): a 32-bit integer hash
    (multiply-xorshift, as in murmur3's finaliser) of (index, seed, salt), computed in int64 without
    overflow."""
    idx = torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape)
    h = (idx * 0x9E3779B1 + (seed * 0x85EBCA6B + salt * 0xC2B2AE35)) & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x045D9F3B) & _MASK32
    h = h ^ (h >> 16)
    h = (h * 0x045D9F3B) & _MASK32
    h = h ^ (h >> 16)
    return (h & 0xFFFF).to(torch.int32)


def views(flat: torch.Tensor, numels: list[int], shapes: list[tuple[int, ...]]) -> Tensors:
    """``flat`` (λ or one of its moments) per penalised tensor, shaped like it (views)."""
    return [c.view(s) for c, s in zip(flat.split(numels), shapes, strict=True)]


Group = dict[str, Any]  # an optimizer param group
Folded = list[tuple[torch.Tensor, Group]]  # the other parameters a call updates, with their groups
Held = list[tuple[Any, Any, Any]]  # (mapping, key, value): where a frame's tensors were read from
Taken = tuple[NamedTuple, Held, "Tensors", bool]  # what a driver reads for a new frame (FusedUpdate.frame)


class Frame(NamedTuple):
    """A driver's kernel tensors as they stay from step to step: taken once (``FusedUpdate.frame``) and
    kept on the plan while they are current — the same other parameters folded into the call, and every
    tensor read from the optimizer's state still the one there (``optimizer.load_state_dict``, a state
    reset or a new buffer makes a new frame). Only the gradients are new each step: the gradient fields of
    ``tensors`` are empty until :meth:`FusedUpdate.run` fills them in."""

    folded: Folded  # the other parameters updated in the same call
    held: tuple[tuple, tuple, tuple]  # (mappings, keys, values): ``mapping.get(key) is value`` for each
    # (the tensors are still the optimizer's), as three columns: checked in one pass in C
    tensors: NamedTuple  # the kernel's tensors, gradients left out
    identity: tuple  # ``tensors``' identity for the direct call (see :func:`~.launch.identity`)
    steps: Tensors  # the optimizer's step-count tensors for them (Adam), to read
    advance: bool  # whether :meth:`FusedUpdate.finish` advances ``steps`` (else the kernel does)
    seen: list  # per step-count tensor read: (it, its version, its count) after the last step (``counted``)
    memo: list  # [rows, table]: the last hyperparameter rows and their table (see FusedUpdate.step_values)

    def current(self, folded: Folded) -> bool:
        """Whether this frame still holds: the same parameters folded, the same optimizer state."""
        if len(folded) != len(self.folded):
            return False
        for (p, g), (q, h) in zip(folded, self.folded, strict=True):
            if p is not q or g is not h:
                return False
        mappings, keys, values = self.held
        return all(map(operator.is_, map(dict.get, mappings, keys), values))

    def counted(self, steps: Tensors) -> list[int]:
        """The count of the step about to be taken for each step-count tensor in ``steps`` (its value plus
        one), each read from its device once and then mirrored in ``seen`` for as long as the tensor's
        version counter shows no change but the step's own advance: no host read, no device sync per
        step, and a count set from outside (in place, or a new tensor in its place) is read again.
        ``steps`` are this frame's (and HALO's own count), in the same order every step."""
        seen = self.seen
        if len(seen) != len(steps):
            seen[:] = [None] * len(steps)
        out = []
        for i, step in enumerate(steps):
            version, last = step._version, seen[i]
            if last is not None and last[0] is step and last[1] == version:
                n = last[2] + 1
            else:
                n = int(step.item()) + 1
            seen[i] = (step, version + 1, n)  # the advance after the kernel is one in-place change
            out.append(n)
        return out


def columns(held: Held) -> tuple[tuple, tuple, tuple]:
    """``held``'s (mapping, key, value) rows as three columns (:attr:`Frame.held`); every mapping is a
    ``dict`` (the optimizer's ``__dict__``, its state and a parameter's state)."""
    mappings, keys, values = zip(*held, strict=True) if held else ((), (), ())
    return mappings, keys, values


@dataclass(frozen=True, eq=False)
class Plan:
    """What the fused step needs that does not change from step to step (cached on the HALO, per optimizer).

    The fields are never reassigned; ``xi``, ``psi`` (filled when target mode changes ξ and ψ),
    and ``frames`` are updated in place."""

    key: tuple[int, ...]  # the optimizer and the storage of λ and its moments the plan was made for
    params: Tensors  # the penalised weights, as the optimizer holds them (DTensors when sharded)
    ws: Tensors  # the penalised weights (sharded: this process's blocks, views of ``params``)
    groups: list[Group]  # the optimizer group of each penalised weight
    others: list[tuple[torch.Tensor, Group]]  # the optimizer's other parameters and their groups
    other_groups: list[Group]  # those groups, each once
    lam_group: Group | None  # λ's optimizer group; None: λ is not in the optimizer
    lams: Tensors  # λ per penalised weight, shaped like it (views into ``halo.lam``)
    bufs: Tensors  # λ's momentum (SGD) or first Adam moment, as views
    sq: Tensors  # λ's second Adam moment, as views (empty unless coupled Adam)
    dtype: torch.dtype  # of the hyperparameter table: λ's, at least float32
    psi: torch.Tensor  # 0-dim, ψ
    xi: torch.Tensor  # 0-dim, ξ: a tensor, so that changing it does not recompile the kernel
    frames: dict[str, Frame]  # the driver's kernel tensors, kept while they are current (see Frame)
    launches: Launches | None  # the kernels' direct calls (see :mod:`~.launch`); None: sharded, the
    # local blocks are new tensors each step
    block: Callable[[torch.Tensor], torch.Tensor]  # this process's block of a tensor (sharded.local, or
    # the tensor itself when nothing is sharded: no check per tensor per step)


class StepValues(NamedTuple):
    """A kernel's inputs that change from step to step, as tensors, so that changing them (an lr
    scheduler, target mode's ξ, the step counts in Adam's bias corrections) does not recompile it."""

    hp: torch.Tensor  # per-tensor hyperparameters, one row per tensor (layout: the kernel's docstring)
    lam_sum_term: torch.Tensor  # 0-dim, ψ·s of ∂/∂λ (see the module doc)
    xi: torch.Tensor  # 0-dim, ξ
    seed: torch.Tensor | int = 0  # 0-dim int64 (the fused steps taken): the seed of bfloat16 λ's rounding


class Penalised(Protocol):
    """What the fused step reads of its penalty (``HALO``): λ and its buffers, its settings, its weights;
    ``control`` is called once per step before the kernel (target mode steers ξ there)."""

    lam: torch.Tensor
    lam_momentum: torch.Tensor
    lam_exp_avg_sq: torch.Tensor
    fused_steps: torch.Tensor
    numels: list[int]
    shapes: list[tuple[int, ...]]
    num_penalized: int
    lambda_min: float
    lambda_max: float
    lambda_lr_scale: float
    lambda_weight_decay: float | None
    prox: bool
    form: str
    p: float
    xi: float
    psi: float
    layout: Layout

    def penalised_parameters(self) -> list[torch.Tensor]: ...

    def control(self, ws: Tensors, step_size: float, lr: float) -> None: ...


Driver = Callable[["FusedUpdate", torch.optim.Optimizer], None]


class FusedUpdate:
    """HALO's update inside ``optimizer.step()``: made by ``HALO.attach`` and owned by the penalty.

    ``family`` (``"sgd"``, ``"adam"``) and ``coupled`` (Adam: HALO's gradients through Adam's
    normalisation) are fixed at attach; :meth:`step` runs ``driver`` (:func:`~.sgd.sgd_step`,
    :func:`~.adam.adam_step`), which builds the tensors and constants of its kernel from this object: the
    :class:`Plan` (made once per optimizer, kept here), λ's hyperparameters, ψ's term, the step values."""

    def __init__(self, penalty: Penalised, family: str, coupled: bool, driver: Driver) -> None:
        self.penalty, self.family, self.coupled, self.driver = penalty, family, coupled, driver
        self.plan: Plan | None = None

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.driver(self, optimizer)  # (a driver runs without autograd: no second no_grad here)

    def set_strengths(self, xi: float, psi: float) -> None:
        """ξ and ψ changed (target mode): into the plan's tensors, so the kernel is not recompiled."""
        if self.plan is not None:
            self.plan.xi.fill_(xi)
            self.plan.psi.fill_(psi)

    def plan_for(
        self, optimizer: torch.optim.Optimizer, same: Callable[[Group], tuple], constants: tuple[str, ...]
    ) -> Plan:
        """The :class:`Plan` for ``optimizer``, made once and kept (remade if the optimizer's groups or
        the storage of λ and its moments change).

        ``same(group)`` are the hyperparameters the kernel takes as constants: they must agree for all
        penalised weights (and an other parameter is folded into the call only where they agree too)."""
        halo = self.penalty
        buffers = (halo.lam.data_ptr(), halo.lam_momentum.data_ptr(), halo.lam_exp_avg_sq.data_ptr())
        # the group dicts themselves: optimizer.load_state_dict puts new ones in place (the plan holds the
        # old ones, so their ids are not reused while it lives)
        key = (id(optimizer), *map(id, optimizer.param_groups), *buffers)
        if self.plan is not None and self.plan.key == key:
            return self.plan
        lam = halo.lam.detach()
        params = halo.penalised_parameters()
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        groups = [group_of.get(id(w)) for w in params]
        if any(g is None for g in groups):
            raise ValueError(
                "fused HALO: the penalised weights are not all in the optimizer it is attached to"
            )
        if len({same(g) for g in groups}) != 1:
            raise ValueError(f"fused HALO needs the same {'/'.join(constants)} for all penalised weights")
        penalised = {id(w) for w in params} | {id(halo.lam)}
        others = [(p, g) for g in optimizer.param_groups for p in g["params"] if id(p) not in penalised]
        dtype = torch.promote_types(lam.dtype, torch.float32)
        sharded = any(map(is_sharded, params))
        self.plan = Plan(
            key=key,
            params=params,
            ws=[local(p) for p in params],
            groups=groups,
            others=others,
            other_groups=list({id(g): g for p, g in others}.values()),
            lam_group=group_of.get(id(halo.lam)),
            lams=views(lam, halo.numels, halo.shapes),
            bufs=views(halo.lam_momentum, halo.numels, halo.shapes) if halo.lam_momentum.numel() else [],
            sq=views(halo.lam_exp_avg_sq, halo.numels, halo.shapes) if halo.lam_exp_avg_sq.numel() else [],
            dtype=dtype,
            psi=torch.tensor(halo.psi, dtype=dtype, device=lam.device),
            xi=torch.tensor(halo.xi, dtype=dtype, device=lam.device),
            frames={},
            launches=None if sharded else Launches(),
            block=local if sharded else _itself,
        )
        return self.plan

    def frame(self, plan: Plan, same: Callable[[Group], tuple], take: Callable[[Folded], Taken]) -> Frame:
        """This step's :class:`Frame`: the plan's if it is current, else a new one (kept) from
        ``take(folded)``, which reads the kernel's tensors but the gradients for the penalised weights and
        ``folded`` (the optimizer's other parameters that take their plain step in the same call: those
        with a dense gradient and the same kernel constants ``same(group)`` as the penalised weights; the
        rest are left to ``optimizer.step()``)."""
        first = same(plan.groups[0])
        agree = {id(g): same(g) == first for g in plan.other_groups}
        folded = [
            (p, g) for p, g in plan.others if p.grad is not None and not p.grad.is_sparse and agree[id(g)]
        ]
        frame = plan.frames.get("step")
        if frame is None or not frame.current(folded):
            tensors, held, steps, advance = take(folded)
            frame = Frame(folded, columns(held), tensors, identity(tensors), steps, advance, [], [None, None])
            plan.frames["step"] = frame
        return frame

    def lam_hyper(self, g: Group) -> tuple[float, float]:
        """λ's lr and weight decay: its own optimizer group's if it is in the optimizer, else the weights'
        scaled by ``lambda_lr_scale`` (and ``lambda_weight_decay`` if set)."""
        assert self.plan is not None
        if self.plan.lam_group is not None:  # λ is in the optimizer: its group (and scheduler) rules
            return self.plan.lam_group["lr"], self.plan.lam_group["weight_decay"]
        halo = self.penalty
        wd = g["weight_decay"] if halo.lambda_weight_decay is None else halo.lambda_weight_decay
        return g["lr"] * halo.lambda_lr_scale, wd

    def budget_term(self) -> torch.Tensor:
        """ψ·s of ∂/∂λ (see the module doc)."""
        halo, plan = self.penalty, self.plan
        assert plan is not None
        if halo.form == "l1" and halo.p == 0.0:
            return plan.psi  # ψ·sign(Σ|λ|) with every λ > 0
        d = total(halo.lam.detach().abs().sum().reshape(1), halo.layout).reshape(()) - halo.p
        return halo.psi * (2.0 * d if halo.form == "l2" else torch.sign(d))

    def step_values(self, hp: list[tuple[float, ...]], frame: Frame) -> StepValues:
        """This step's :class:`StepValues` from the rows of the hyperparameter table: the table is the
        last step's where the rows are (the usual case: they change with the lr; on a GPU, no copy to
        the device then)."""
        plan = self.plan
        assert plan is not None
        memo = frame.memo
        if memo[0] == hp:
            table = memo[1]
        else:
            flat = array("f" if plan.dtype == torch.float32 else "d", [x for row in hp for x in row])
            table = torch.frombuffer(flat, dtype=plan.dtype).view(len(hp), -1)
            if not plan.xi.is_cpu:
                table = table.to(plan.xi.device)
            memo[:] = [hp, table]
        return StepValues(
            hp=table, lam_sum_term=self.budget_term(), xi=plan.xi, seed=self.penalty.fused_steps
        )

    def run(self, kernel: Kernel, frame: Frame, hp: list[tuple[float, ...]], c: NamedTuple) -> None:
        """Run the driver's ``kernel`` on this step's tensors (``frame``'s, with this step's gradients),
        hyperparameter rows ``hp`` and constants ``c`` (see :mod:`~.launch`)."""
        plan = self.plan
        assert plan is not None
        block = plan.block
        grads = [
            block(p.grad) if p.grad is not None else torch.zeros_like(w)  # (zeros: a weight without one)
            for p, w in zip(plan.params, plan.ws, strict=True)
        ]
        o_grads = [block(p.grad) for p, _ in frame.folded]
        t = frame.tensors._replace(grads=grads, other_grads=o_grads)
        launch(kernel, plan.launches, t, self.step_values(hp, frame), c, frame.identity)

    def finish(self, frame: Frame) -> None:
        """After the kernel: advance the optimizer's step counts (``frame.steps``) and HALO's, and clear
        the gradients of what it updated (the penalised weights and ``frame.folded``), so that
        ``optimizer.step()`` skips them."""
        if frame.advance and frame.steps:
            torch._foreach_add_(frame.steps, 1.0)
        self.penalty.fused_steps.add_(1)
        assert self.plan is not None
        for p in self.plan.params:
            p.grad = None
        for p, _ in frame.folded:
            p.grad = None


def _itself(t: torch.Tensor) -> torch.Tensor:
    return t


# ------------------------------------------------------------------------------ the kernels' shared math


def lam_squared(lam: torch.Tensor, lambda_min: float, lambda_max: float) -> torch.Tensor:
    """``λ²`` of stored λ, read and clamped into its box as the fused step reads it: what target mode
    scores the weights by (``|w|·λ²``), on its eager and its compiled path alike."""
    return read(lam).clamp(lambda_min, lambda_max).square()


def lam_terms(
    w: torch.Tensor, lam: torch.Tensor, s: StepValues, lambda_min: float, lambda_max: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a weight tensor and its stored λ: λ read and clamped into its box, the shrinkage ``ξ/λ²``
    (``∂/∂|w|``), and the weight term of ``∂/∂λ``, ``−2ξ|w|/λ³`` (the caller adds ψ's term and λ's decay)."""
    # λ is kept >= λ_min between steps; clamping here makes any value set from outside count as projected.
    lam = torch.clamp(read(lam), lambda_min, lambda_max)
    inv = torch.reciprocal(lam)
    inv2 = inv * inv
    return lam, s.xi * inv2, (-2.0 * s.xi) * w.abs() * (inv2 * inv)


def soft_threshold(w: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The proximal map of ``threshold·|w|``: ``sign(w)·max(|w| − threshold, 0)`` (exact zeros)."""
    return torch.sign(w) * torch.clamp_min(w.abs() - threshold, 0.0)
