"""BatchNorm recalibration after pruning (haloprune.pruning.batchnorm)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from haloprune import (
    build_model,
    global_magnitude_prune,
)
from haloprune.pruning import recalibrate_batchnorm


def test_batchnorm_recalibration_matches_the_pruned_networks_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(3)
    )
    x = torch.randn(64, 1, 6, 6)
    model(x)  # materialise the lazy layer
    model.train()
    for _ in range(3):  # dense statistics
        model(torch.randn(32, 1, 6, 6) * 3 + 1)
    model.eval()
    global_magnitude_prune(model, 0.7)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}

    conv_out = model[0](x).detach()  # the pruned convolution's outputs on every image
    bn = model[1]
    assert recalibrate_batchnorm(model, x, images=64, batch_size=16) == 1  # an exact average of 4 batches
    torch.testing.assert_close(bn.running_mean, conv_out.mean(dim=(0, 2, 3)))
    assert recalibrate_batchnorm(model, x, images=64, batch_size=64) == 1
    torch.testing.assert_close(bn.running_var, conv_out.transpose(0, 1).flatten(1).var(dim=1))
    assert bn.momentum == 0.1 and not model.training and not model[3].training  # all restored
    after = {k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(after[k], weights[k]) for k in after)  # weights and masks untouched

    plain = build_model("lenet-300-100")
    before = copy.deepcopy(plain.state_dict())
    assert recalibrate_batchnorm(plain, torch.randn(8, 1, 28, 28)) == 0  # no BatchNorm: nothing to do
    assert recalibrate_batchnorm(model, x, images=0) == 0
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())


def test_batchnorm_recalibration_counts_sync_batchnorm() -> None:
    """Distributed training on CUDA turns a model's BatchNorm layers into SyncBatchNorm, in place."""
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    assert isinstance(model[1], nn.SyncBatchNorm)
    x = torch.randn(32, 1, 6, 6)
    assert recalibrate_batchnorm(model, x, images=32, batch_size=32) == 1
    torch.testing.assert_close(model[1].running_mean, model[0](x).detach().mean(dim=(0, 2, 3)))
