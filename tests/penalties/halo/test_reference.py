"""Fidelity to the HALO reference's MNIST training (skyler120/sparsity-halo, ``mnist.py --slope``).

The reference's update is written out here from its published code, not imported: one loss
``CE + ξ Σ_j |θ_j| / λ_j² + ψ Σ_j |λ_j|`` over the weights *and biases* of every Linear/Conv layer, λ
initialised to 1, ``optimizer`` (weights) and ``reg_optimizer`` (λ) two SGDs with lr 0.1, momentum 0.9,
weight decay 0; two ``StepLR`` schedulers, both built on the *weights'* optimizer and stepped before every
batch (so the weights' lr falls by γ² every ``step_size`` batches and λ's lr never changes). haloprune in
reference mode (``include_bias``, ``lambda_schedule = "constant"``, a per-step schedule with γ² at 0-based
steps ``step_size - 1``, …) must give the same weights and λ after 50 steps in float64, to round-off, on
its fused path and on its autograd path.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from haloprune.config import OptimConfig, PenaltyConfig
from haloprune.penalties import build_penalty
from haloprune.training import fit

STEPS, STEP_SIZE, XI, PSI, LR, MOMENTUM = 50, 20, 1e-3, 1e-4, 0.1, 0.9

pytestmark = pytest.mark.usefixtures("one_thread")


class SmallLeNet(nn.Module):
    """A LeNet-5 in miniature (conv, pool, conv, pool, two fc), every layer with a bias; 12x12 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc1 = nn.Linear(6 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(STEPS, 20, 1, 12, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (STEPS, 20), generator=g)
    return list(zip(x, y, strict=True))


def reference_train(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The reference's ``train()`` with ``--slope`` (one pass over ``batches``); returns λ."""
    penalised = [p for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear) for p in m.parameters()]
    lam = torch.ones(sum(p.numel() for p in penalised), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=0.0)
    reg_optimizer = torch.optim.SGD([lam], lr=LR, momentum=MOMENTUM, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, STEP_SIZE, gamma=0.1)
    reg_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, STEP_SIZE, gamma=0.1)  # sic: the weights'
    lrs = []
    for x, y in batches:
        with warnings.catch_warnings():  # the reference steps its schedulers before the optimizer
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
            reg_scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        out = model(x)
        reg_loss, idx = 0.0, 0
        for p in penalised:
            n = p.numel()
            reg_loss = reg_loss + torch.sum(1.0 / lam[idx : idx + n] ** 2.0 * torch.abs(p).view(-1))
            idx += n
        loss = F.cross_entropy(out, y) + XI * reg_loss + PSI * torch.sum(torch.abs(lam))
        optimizer.zero_grad()
        reg_optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reg_optimizer.step()
    # what the reference's schedule does: x0.01 from the STEP_SIZE-th batch on, λ's lr untouched
    expected = [LR * 0.01 ** ((k + 1) // STEP_SIZE) for k in range(STEPS)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert reg_optimizer.param_groups[0]["lr"] == LR
    return lam.detach()


REFERENCE_OPTIM = OptimConfig(
    epochs=1,
    lr=LR,
    momentum=MOMENTUM,
    weight_decay=0.0,
    schedule="step",
    milestone_unit="step",
    milestones=[STEP_SIZE - 1, 2 * STEP_SIZE - 1],
    gamma=0.01,
)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
def test_reference_mode_matches_the_reference_update_for_50_steps_in_float64(fused: bool) -> None:
    torch.manual_seed(0)
    model = SmallLeNet().double()
    ours = copy.deepcopy(model)
    batches = _batches()
    ref_lam = reference_train(model, batches)

    pen_cfg = PenaltyConfig(
        name="halo", xi=XI, psi=PSI, include_bias=True, lambda_schedule="constant", fused=fused
    )
    halo = build_penalty("halo", ours, **pen_cfg.kwargs())
    fit(ours, batches, REFERENCE_OPTIM, penalty=halo, penalty_cfg=pen_cfg, progress=False)

    assert halo.num_penalized == ref_lam.numel() == sum(p.numel() for p in model.parameters())
    for (name, ref), got in zip(model.named_parameters(), ours.parameters(), strict=True):
        assert torch.allclose(got, ref, rtol=0, atol=1e-13), name
    # λ in the reference's order (module order, weight then bias): haloprune's per-parameter views
    got_lam = torch.cat([lam.flatten() for lam in halo.lambdas().values()])
    assert got_lam.dtype == torch.float64
    assert torch.allclose(got_lam, ref_lam, rtol=0, atol=1e-13)
    assert (ref_lam - 1).abs().max() > 1e-3  # λ did move: the comparison is not of untouched values


def test_following_lambda_would_not_match() -> None:
    """The test can fail: haloprune's default (λ's lr follows the weights' decays) differs from the
    reference within the same 50 steps."""
    torch.manual_seed(0)
    model = SmallLeNet().double()
    ours = copy.deepcopy(model)
    batches = _batches()
    ref_lam = reference_train(model, batches)
    pen_cfg = PenaltyConfig(name="halo", xi=XI, psi=PSI, include_bias=True)
    halo = build_penalty("halo", ours, **pen_cfg.kwargs())
    fit(ours, batches, REFERENCE_OPTIM, penalty=halo, penalty_cfg=pen_cfg, progress=False)
    got_lam = torch.cat([lam.flatten() for lam in halo.lambdas().values()])
    assert (got_lam - ref_lam).abs().max() > 1e-6
