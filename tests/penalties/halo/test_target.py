"""Target-sparsity HALO: the controller, the step budget, the proximal step, λ's safe range, and runs landing
on target with SGD and AdamW."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from haloprune import HALO
from haloprune.config import PenaltyConfig, TrainConfig, load_config
from haloprune.core.errors import ConfigError
from haloprune.penalties.halo import fused, sgd
from haloprune.penalties.halo.penalty import DEFAULT_MAX_SHRINK
from haloprune.penalties.halo.target import (
    GAINS,
    SparsityController,
    kth_smallest,
    lr_trajectory,
    step_budget,
)
from haloprune.training.optim import LRSchedule
from tests.helpers import mlp


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_attach_computes_the_step_budget_from_the_scheduler(opt_cls) -> None:
    model = mlp()
    kw = {"momentum": 0.9} if opt_cls is torch.optim.SGD else {}
    opt = opt_cls(model.parameters(), lr=0.05, **kw)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=40)
    halo = HALO(model, target_sparsity=0.9)
    halo.attach(opt, total_steps=40, scheduler=sched)
    probe_opt = opt_cls(mlp().parameters(), lr=0.05, **kw)
    probe = torch.optim.lr_scheduler.OneCycleLR(probe_opt, max_lr=0.05, total_steps=40)
    budget, first_lr = 0.0, probe_opt.param_groups[0]["lr"]
    for _ in range(40):  # OneCycleLR cycles SGD's momentum too: each step counts lr_t / (1 - m_t)
        group = probe_opt.param_groups[0]
        budget += group["lr"] / (1 - group["momentum"]) if opt_cls is torch.optim.SGD else group["lr"]
        probe_opt.step()
        probe.step()
    assert halo.step_budget == pytest.approx(budget, rel=1e-9)
    assert opt.param_groups[0]["lr"] == pytest.approx(first_lr)  # the real scheduler is untouched
    assert sched.last_epoch == 0


@pytest.mark.parametrize(("lr", "batch", "epochs"), [(3e-3, 32, 30), (1e-2, 64, 30), (3e-3, 32, 60)])
def test_target_mode_with_adamw_reaches_the_target_with_the_defaults(
    lr: float, batch: int, epochs: int
) -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 12)
    y = (x[:, :3].sum(1) > 0).long() + 2 * (x[:, 3] > 0).long()
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * (512 // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    halo = HALO(model, target_sparsity=0.9)
    halo.attach(opt, total_steps=steps, scheduler=sched)
    for _ in range(epochs):
        for i in range(0, 512, batch):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
            opt.step()
            sched.step()
    sparsity = sum(int((w == 0).sum()) for w in halo.weights()) / halo.num_penalized
    # exact zeros, before any pruning (on Fashion-MNIST LeNet-300-100 it lands within 1.2 points of 95-99%)
    assert sparsity == pytest.approx(0.9, abs=0.04)


def _teacher_data(n: int = 2048, d: int = 32, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels from a random two-layer teacher: every input matters, so no weight is free to drop."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    hidden = torch.relu(x @ torch.randn(d, 64, generator=g))
    return x, (hidden @ torch.randn(64, classes, generator=g)).argmax(1)


def test_target_density_is_a_cubic_ramp_in_budget_units() -> None:
    ctrl = SparsityController(0.98, ramp_end=0.5)
    assert ctrl.target_density(0.0) == pytest.approx(1.0)
    assert ctrl.target_density(0.25) == pytest.approx(0.02 + 0.98 * 0.5**3)
    assert ctrl.target_density(0.5) == pytest.approx(0.02)
    assert ctrl.target_density(0.9) == pytest.approx(0.02)


def test_controller_raises_c_when_too_dense_and_lowers_it_when_too_sparse() -> None:
    ctrl = SparsityController(0.9, ramp_end=0.5, ki=0.5, kp=0.5, too_sparse=3.0)
    start = ctrl.integral
    ctrl.spent = 60.0  # past the ramp of a budget of 100: target density 0.1
    ctrl.update(density=0.4, budget=100.0)  # too dense: e = log 4, 0.6 of the budget elapsed
    assert ctrl.integral == pytest.approx(start + 0.5 * math.log(4.0) * 0.6)
    assert ctrl.log_c_hat == pytest.approx(ctrl.integral + 0.5 * math.log(4.0))
    before = ctrl.integral
    ctrl.spent = 70.0
    ctrl.update(density=0.05, budget=100.0)  # too sparse: e = log 0.5, corrected 3x harder
    assert ctrl.integral == pytest.approx(before + 0.5 * 3.0 * math.log(0.5) * 0.1)
    assert ctrl.log_c_hat < ctrl.integral


def test_controller_cannot_swing_c_in_a_short_run() -> None:
    """A run with a handful of updates: one update moves log c by at most 0.5 (plus the bounded
    proportional part), however large the error and the budget elapsed."""
    ctrl = SparsityController(0.99, ramp_end=0.5, too_sparse=5.0)
    start = ctrl.integral
    ctrl.spent = 90.0
    ctrl.update(density=1.0, budget=100.0)  # e = log 100, 0.9 of the budget in one update
    assert ctrl.integral == pytest.approx(start + 0.5)
    ctrl.spent = 95.0
    ctrl.update(density=0.0, budget=100.0)  # everything dead
    assert ctrl.integral == pytest.approx(start)
    assert ctrl.log_c_hat == pytest.approx(start - ctrl.kp * 3.0 * 5.0)


def test_step_budget_of_a_schedule() -> None:
    """The budget of ``fit``'s lr schedules (an :class:`LRSchedule` in a ``LambdaLR``), SGD momentum 0.9."""

    def budget(kind: str, total_steps: int) -> float:
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
        schedule = LRSchedule(kind, steps_per_epoch=10, total_steps=total_steps)
        return step_budget(opt, total_steps, torch.optim.lr_scheduler.LambdaLR(opt, schedule), momentum=True)

    assert budget("constant", 100) == pytest.approx(100 * 0.1 / 0.1)
    assert budget("cosine", 1000) == pytest.approx(500.0, rel=2e-3)  # mean of a cosine ramp: 1/2


def test_prox_step_soft_thresholds_to_exact_zero() -> None:
    """prox=True: w ← sign(v)·max(|v| − lr·ξ/λ², 0) with v the plain SGD step; λ's own step unchanged."""
    w = torch.tensor([[0.5, -0.0005, 0.01, -0.3]], dtype=torch.float64)
    g = torch.tensor([[0.1, 0.0, -0.05, 0.2]], dtype=torch.float64)
    lam = torch.tensor([[1.0, 0.1, 0.01, 0.5]], dtype=torch.float64)
    xi, lr, psi = 1e-4, 0.1, 1e-3
    ws, lams = [w.clone()], [lam.clone()]
    hp = torch.tensor([[lr, 0.0, lr, 0.0]], dtype=torch.float64)
    f64 = {"dtype": torch.float64}
    sgd.halo_sgd_step(
        sgd.SGDTensors(ws, [g], [g], lams, [g], [], [], []),
        fused.StepValues(hp, lam_sum_term=torch.tensor(psi, **f64), xi=torch.tensor(xi, **f64)),
        sgd.SGDConstants(1e-3, 1e3, momentum=0.0, dampening=0.0, nesterov=False, first=False, prox=True),
    )
    v = w - lr * g
    expected = torch.sign(v) * torch.clamp_min(v.abs() - lr * xi / lam**2, 0.0)
    torch.testing.assert_close(ws[0], expected, rtol=0, atol=1e-15)
    assert (ws[0] == 0).sum() == 2  # the 2nd and 3rd fall inside their thresholds
    expected_lam = lam - lr * (-2 * xi * w.abs() / lam**3 + psi)
    torch.testing.assert_close(lams[0], expected_lam, rtol=0, atol=1e-15)


def test_lambda_stays_in_its_box_whatever_the_step() -> None:
    """λ at the floor under a weight that is large: the λ gradient −2ξ|w|/λ³ is huge; λ must not explode."""
    torch.manual_seed(0)
    model = nn.Linear(20, 5)
    halo = HALO(model, xi=1.0, psi=1e-3, lambda_min=1e-3, lambda_max=10.0)
    with torch.no_grad():
        halo.lam.fill_(1e-3)
        model.weight.mul_(100)
    opt = torch.optim.SGD(model.parameters(), lr=10.0, momentum=0.9)
    halo.attach(opt)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 20)), torch.randint(0, 5, (8,))).backward()
        opt.step()
        assert halo.lam.min().item() >= 1e-3 and halo.lam.max().item() <= 10.0
        assert torch.isfinite(halo()).item()


def test_unstable_corner_trains_without_nan() -> None:
    """ψ = 1e-2, ξ = 1e-9, lr 0.5: λ would step through zero and ξ|w|/λ² explode; it stays finite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    halo = HALO(model, xi=1e-9, psi=1e-2)
    opt = torch.optim.SGD([*model.parameters()], lr=0.5, momentum=0.9)
    halo.attach(opt)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert halo.lam.min().item() >= halo.lambda_min
    assert all(torch.isfinite(p).all() for p in model.parameters()) and torch.isfinite(halo())


@pytest.mark.parametrize("target", [0.9, 0.97])
def test_target_mode_lands_on_the_requested_sparsity(target: float) -> None:
    """One run, no search: the fraction of exactly-zero weights ends within ±0.5% of the target."""
    torch.manual_seed(0)
    x, y = _teacher_data()
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 4))
    halo = HALO(model, target_sparsity=target)
    steps, lr, momentum = 1200, 0.05, 0.9
    schedule = LRSchedule("cosine", steps_per_epoch=32, total_steps=steps)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    halo.attach(opt, total_steps=steps, scheduler=sched)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()
    weights = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()])
    achieved = (weights == 0).float().mean().item()
    assert abs(achieved - target) <= 0.005, achieved
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.8  # it still solves the task


def test_target_state_survives_state_dict() -> None:
    model = nn.Linear(8, 4)
    halo = HALO(model, target_sparsity=0.9, step_budget=500.0)
    assert halo.psi == pytest.approx(5.0 / 500.0)
    halo.controller.log_c_hat, halo.controller.spent, halo.controller.steps = -1.5, 123.0, 77
    halo.begin_training(500.0)
    fresh = HALO(nn.Linear(8, 4), target_sparsity=0.9)
    fresh.load_state_dict(halo.state_dict())
    assert fresh.controller.state() == halo.controller.state()
    assert (fresh.xi, fresh.psi, fresh.step_budget) == (halo.xi, halo.psi, halo.step_budget)


def test_target_mode_refuses_conflicting_settings() -> None:
    model = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="leave xi and psi unset"):
        HALO(model, xi=1e-7, psi=1e-3, target_sparsity=0.9)
    with pytest.raises(ValueError, match="fused"):
        HALO(model, target_sparsity=0.9, fused=False)
    with pytest.raises(ValueError, match="give xi and psi"):
        HALO(model)
    halo = HALO(model, target_sparsity=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    halo.attach(opt)
    model(torch.randn(2, 8)).sum().backward()
    with pytest.raises(RuntimeError, match="begin_training"):
        opt.step()
    for bad, message in [
        (["penalty.name=halo", "penalty.target_sparsity=1.5"], "less than 1"),
        (
            ["penalty.name=l1", "penalty.target_sparsity=0.9"],
            "target_sparsity does not apply to penalty 'l1'",
        ),
        (["penalty.name=halo", "penalty.target_sparsity=0.9", "penalty.xi=1e-7"], "tune psi_hat instead"),
        (["penalty.name=halo", "penalty.target_sparsity=0.9", "penalty.fused=false"], "fused-path update"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(TrainConfig, None, bad)
    assert PenaltyConfig(name="halo", target_sparsity=0.98).kwargs()["target_sparsity"] == 0.98


@pytest.mark.slow
@pytest.mark.parametrize("control", ["pi", "exact", "hard"])
def test_target_run_resumes_bit_identically(tmp_path, real_fmnist, control: str) -> None:
    """The controller's state (c or the last ξ, budget spent, step count) is in the checkpoint: resuming
    after epoch 1 gives the same weights, λ and controller as the uninterrupted run."""
    import warnings

    from haloprune.training.run import train

    def cfg(name: str) -> TrainConfig:
        return load_config(
            TrainConfig,
            None,
            [
                "penalty.name=halo",
                "penalty.target_sparsity=0.9",
                f"penalty.target_control={control}",
                "data.train_subset=1500",
                "data.val_size=200",
                "data.test_subset=200",
                "optim.epochs=2",
                f"out_dir='{tmp_path}'",
                f"name={name}",
            ],
        )

    full = train(cfg("full"), progress=False)
    for name in ("model.pt", "checkpoint.pt", "checkpoint.pt.sha256"):  # back to the end of epoch 1
        (tmp_path / "full" / name).unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "falling back to the previous checkpoint"
        resumed = train(cfg("full"), resume=True, progress=False)
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert torch.equal(resumed.penalty.lam, full.penalty.lam)
    assert resumed.penalty.controller.state() == full.penalty.controller.state()
    assert resumed.penalty.xi == full.penalty.xi
    assert full.penalty.controller.steps == 2 * 15 and full.history[-1]["density"] < 1.0


def test_step_budget_of_a_scheduler_stepped_per_epoch() -> None:
    """``every``: a scheduler stepped once per epoch (Lightning's ``interval="epoch"``) holds each lr for
    the epoch's steps; the last epoch may be cut short."""
    w = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    assert lr_trajectory(opt, 7, sched, every=3) == [1.0] * 3 + [0.5] * 3 + [0.25]
    assert step_budget(opt, 7, sched, momentum=True, every=3) == pytest.approx((3 + 1.5 + 0.25) / 0.5)
    assert opt.param_groups[0]["lr"] == 1.0  # the run's scheduler is untouched
    with pytest.raises(ValueError, match="every must be a positive int"):
        step_budget(opt, 7, sched, every=0)


@pytest.mark.parametrize(
    ("opt_cls", "kp", "ki"), [(torch.optim.SGD, 1.0, 20.0), (torch.optim.AdamW, 0.25, 20.0)]
)
def test_attach_sets_the_gains_of_the_optimizer_family(opt_cls, kp: float, ki: float) -> None:
    model = mlp()
    halo = HALO(model, target_sparsity=0.9)
    halo.attach(opt_cls(model.parameters(), lr=1e-3), total_steps=10)
    assert (halo.controller.kp, halo.controller.ki) == (kp, ki)


def _final_swing(gains: dict[str, float], steepness: float = 3.0) -> float:
    """A plant whose density answers log c at once and steeply, ``log d = −steepness·log(c / c*)`` around
    the target (a dead weight's threshold goes as c³ when λ sits at its floor, as with Adam): the largest
    |log(d / d_target)| over the last quarter of the run, once the target is held."""
    ctrl = SparsityController(0.8, **gains)
    budget, steps = 1.0, 4000
    target_c = math.exp(ctrl.integral + 1.0)  # the c that gives the final target
    swings = []
    for t in range(steps):
        if ctrl.step(budget / steps):
            wanted = ctrl.target_density(ctrl.spent / budget)
            c = ctrl.c(budget) * budget
            density = min(1.0, 0.2 * (c / target_c) ** -steepness)
            ctrl.update(density, budget)
            if t > 0.75 * steps:
                swings.append(abs(math.log(density / wanted)))
    return max(swings)


def test_adam_gains_hold_a_steep_plant_where_sgd_gains_oscillate() -> None:
    """Why Adam has its own gains (``GAINS``): on a steep, lag-free plant SGD's proportional gain
    overshoots every update (kp·steepness > 2) into a sustained swing; Adam's holds the target."""
    assert _final_swing(GAINS["adam"]) < 0.05  # within 5% of the target density
    assert _final_swing({**GAINS["sgd"], "too_sparse": 1.0}) > 1.0  # a factor e either way


@pytest.fixture
def fmnist_slice(real_fmnist):
    from haloprune.data import load_dataset

    return load_dataset("fashion-mnist", real_fmnist, val_size=500, train_subset=3000, test_subset=500)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("optimizer", "lr", "momentum", "schedule", "control"),
    [
        (opt, lr, m, schedule, "exact")
        for opt, lr, m in [("sgd", 0.05, 0.9), ("adam", 1e-3, 0.0), ("adamw", 1e-3, 0.0)]
        for schedule in ("cosine", "step")
    ]
    + [("sgd", 0.05, 0.9, "cosine", "hard"), ("adamw", 1e-3, 0.0, "cosine", "hard")],
)
def test_exact_control_ends_within_a_tenth_of_a_percent_of_the_target(
    fmnist_slice, optimizer: str, lr: float, momentum: float, schedule: str, control: str
) -> None:
    """``target_control="exact"`` (and ``"hard"``, its ramp without shrinkage): the fraction of exact zeros
    the run itself leaves — before any pruning — is the target within ±0.1%, with every optimizer family and
    schedule (real Fashion-MNIST, LeNet-300-100), and it never overshoots the ramp on the way."""
    from haloprune import build_model
    from haloprune.config import OptimConfig
    from haloprune.training import Callback, fit

    torch.manual_seed(0)
    model = build_model("lenet-300-100")
    halo = HALO(model, target_sparsity=0.95, target_control=control)
    optim = OptimConfig(
        optimizer=optimizer,
        epochs=4,
        batch_size=100,
        lr=lr,
        momentum=momentum,
        weight_decay=1e-4,
        schedule=schedule,
        milestones=[2, 3] if schedule == "step" else [],
    )
    above: list[float] = []

    class Watch(Callback):
        def on_step_end(self, state) -> None:
            ctrl = halo.controller
            zeros = 1 - sum(int(torch.count_nonzero(w)) for w in halo.weights()) / halo.num_penalized
            wanted = 1 - ctrl.target_density(ctrl.spent / halo.step_budget)
            above.append(zeros - wanted)

    fit(model, fmnist_slice, optim, penalty=halo, progress=False, callbacks=[Watch()])
    zeros = 1 - sum(int(torch.count_nonzero(w)) for w in halo.weights()) / halo.num_penalized
    assert zeros == pytest.approx(0.95, abs=1e-3)
    assert max(above) <= 1e-3  # never ahead of the ramp by more than a tenth of a percent


@pytest.mark.parametrize("seed", range(6))
def test_kth_smallest_equals_kthvalue_whatever_the_hint(seed: int) -> None:
    """The exact control's selection: the hint only makes it cheaper. Ties, zeros, infinities (the
    top-up's dead weights), hints far off on either side, on a value, at zero, or none."""
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(5000, generator=g) ** 3
    values[torch.rand(5000, generator=g) < 0.6] = 0.0  # dead weights score 0
    values[:50] = values[50]  # ties
    values[-200:] = float("inf")
    ks = [1, 2999, 3000, 3001, 4000, 4799, 4800, 4801, 5000, int(torch.randint(1, 5001, (1,), generator=g))]
    for k in ks:
        want = float(values.kthvalue(k).values)
        tie = values[50].item()
        hints = (None, 0.0, want, want * 1.05, want * 0.95, want * 50, want / 50, 1e-12, 0.5, tie)
        for near in hints:
            assert kth_smallest(values, k, near) == want, (k, near)


def test_hard_control_shrinks_nothing_and_zeroes_the_lowest_scores() -> None:
    """``target_control="hard"``: ξ stays 0 (no proximal shrinkage: a kept weight moves by the optimizer's
    step alone) and the zeros after each step are exactly the ramp's count, the lowest ``|w|·λ²``."""
    torch.manual_seed(0)
    model = nn.Linear(50, 20)
    halo = HALO(model, target_sparsity=0.5, target_control="hard", ramp_end=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    halo.attach(opt, total_steps=10)
    x, y = torch.randn(64, 50), torch.randn(64, 20)
    for _ in range(10):
        before = model.weight.detach().clone()
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        grad = model.weight.grad.clone()
        opt.step()
        assert halo.xi == 0.0
        zeros = int((model.weight == 0).sum())
        assert zeros == halo.target.wanted
        kept = model.weight != 0
        moved = before - 0.1 * grad  # plain SGD, nothing else
        assert torch.equal(model.weight[kept], moved[kept])
        assert moved[~kept].abs().max() <= moved[kept].abs().min()  # λ alike: the magnitude's order
    assert zeros == 500


def test_kth_smallest_answers_in_the_values_precision_whatever_the_hint() -> None:
    """A hint that is not a float32 number (0.3) but rounds to the answer gives the float32 value."""
    values = torch.tensor([0.1, 0.3, 0.3, 0.7])
    for k in (2, 3):
        assert kth_smallest(values, k, 0.3) == float(values.kthvalue(k).values) == float(values[1])


def test_max_shrink_bounds_the_exact_controls_shrinkage_with_adamw() -> None:
    """``max_shrink`` (exact control, Adam/AdamW): ξ never exceeds ``max_shrink·lambda_min²``, so no kept
    weight loses more than ``max_shrink·lr`` to one step's shrinkage; the top-up still meets the ramp's
    count after every step. Unbounded, the same run takes larger ξ; with SGD the bound does not apply."""

    def run(opt_cls, max_shrink: float | None) -> list[float]:
        torch.manual_seed(0)
        model = nn.Linear(50, 20)
        halo = HALO(model, target_sparsity=0.8, ramp_end=0.5, max_shrink=max_shrink)
        opt = opt_cls(model.parameters(), lr=0.01)
        halo.attach(opt, total_steps=30)
        x, y = torch.randn(64, 50), torch.randn(64, 20)
        xis = []
        for _ in range(30):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
            xis.append(halo.xi)
            assert int((model.weight == 0).sum()) >= halo.target.wanted
        assert int((model.weight == 0).sum()) == 800
        return xis

    bound = 0.5 * 1e-3**2
    free, capped = run(torch.optim.AdamW, math.inf), run(torch.optim.AdamW, 0.5)
    assert max(free) > bound and max(capped) == pytest.approx(bound)
    assert all(x <= bound * (1 + 1e-12) for x in capped)
    default = run(torch.optim.AdamW, None)  # the default bound: DEFAULT_MAX_SHRINK (10)
    assert max(default) <= DEFAULT_MAX_SHRINK * 1e-3**2 * (1 + 1e-12) < max(free)
    assert run(torch.optim.SGD, 0.5) == run(torch.optim.SGD, None) == run(torch.optim.SGD, math.inf)
    with pytest.raises(ValueError, match="max_shrink is a setting of target mode"):
        HALO(nn.Linear(4, 2), xi=1e-6, psi=1e-3, max_shrink=1.0)
    with pytest.raises(ConfigError, match="greater than 0"):
        load_config(
            TrainConfig, None, ["penalty.name=halo", "penalty.target_sparsity=0.9", "penalty.max_shrink=0"]
        )
