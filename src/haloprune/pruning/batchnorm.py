"""After pruning: BatchNorm statistics re-estimated for the pruned network, weights untouched."""

from __future__ import annotations

import torch
from torch import nn

from haloprune.core.layers import BATCHNORM


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, x: torch.Tensor, *, images: int = 2048, batch_size: int = 256, seed: int = 0
) -> int:
    """Re-estimate the BatchNorm running statistics of a (pruned) ``model`` on ``images`` inputs of ``x``.

    Pruning shifts every downstream activation, so the statistics the dense network collected are
    stale; this recomputes them (an exact average over a fixed random subset of ``x``, drawn with
    ``seed``), forward passes only: no weight changes, no labels. Dropout and the model's mode are left as
    they were. Returns the number of BatchNorm layers recalibrated (0: none, nothing changed).
    """
    if images <= 0:
        return 0
    bns = [m for m in model.modules() if isinstance(m, BATCHNORM) and m.track_running_stats]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in bns]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:images]
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for chunk in idx.split(batch_size):
            model(x[chunk].to(device))
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return len(bns)
