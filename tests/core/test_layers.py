"""Layer kinds (haloprune.core.layers): ConvTranspose and transformers' Conv1D are penalised, pruned,
grouped and counted like Linear / Conv, with their in-first weight layouts; recognising them imports
nothing optional."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from haloprune import HALO, count_cost, global_magnitude_prune, slim, sparsity_report
from haloprune.core.layers import layer_kind, output_dim, output_groups
from haloprune.core.params import select_parameters
from haloprune.pruning import group_scores


class Decoder(nn.Module):
    """A linear layer into a ConvTranspose2d upsampler (a small generator / decoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 16 * 4 * 4)
        self.up = nn.ConvTranspose2d(16, 6, kernel_size=4, stride=2, padding=1)
        self.out = nn.ConvTranspose1d(6, 3, kernel_size=3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc(z)).view(-1, 16, 4, 4)
        x = torch.relu(self.up(x))  # (N, 6, 8, 8)
        return self.out(x.flatten(2))  # (N, 3, 66)


def test_conv_transpose_is_penalised_pruned_and_grouped_by_output_channel() -> None:
    torch.manual_seed(0)
    model = Decoder()
    assert select_parameters(model) == ["fc.weight", "up.weight", "out.weight"]
    assert select_parameters(model, scope="conv") == ["up.weight", "out.weight"]
    assert layer_kind(model.up) == "conv" and output_dim(model.up) == 1
    assert HALO(model, xi=1e-3, psi=1e-3).num_penalized == 8 * 256 + 16 * 6 * 16 + 6 * 3 * 3
    global_magnitude_prune(model, 0.75)
    total = sparsity_report(model)[-1]
    assert total.params - total.nonzero == round(0.75 * total.params)
    assert sparsity_report(model)[1].sparsity > 0  # the transposed convolutions are pruned too
    groups = output_groups(model, select_parameters(model, include_bias=True))
    assert groups.counts == [256, 6, 3]  # output units: features, then output channels (axis 1)
    assert groups.sizes == [8 + 1, 16 * 16 + 1, 6 * 3 + 1]
    norms = groups.norms([model.get_parameter(n) for n in groups.names])
    torch.testing.assert_close(
        norms[1][2], torch.cat([model.up.weight[:, 2].flatten(), model.up.bias[2:3]]).norm()
    )


def test_cost_of_conv_transpose_counts_each_weight_once_per_input_position() -> None:
    model = Decoder()
    z = torch.randn(2, 8)
    cost = count_cost(model, z, nonzero_only=False)
    # fc: 2048 weights once; up: 1536 weights at 4x4 input positions; out: 54 weights at 64 positions
    assert cost.params == 2048 + 1536 + 54
    assert cost.macs == 2048 + 1536 * 16 + 54 * 64


def test_group_scores_rank_conv_transpose_output_channels_and_slim_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = Decoder().eval()
    with torch.no_grad():
        model.up.weight[:, 2] = 0  # output channel 2 of `up` is dead
    groups, scores = group_scores(model, exclude=["fc.weight"])
    assert groups.counts == [6, 3] and float(scores[0][2]) == 0.0 and bool((scores[0] > 0).sum() == 5)
    global_magnitude_prune(model, 0.5)
    z = torch.randn(3, 8)
    with torch.no_grad():  # slim keeps transposed convolutions whole: correct, not smaller there
        torch.testing.assert_close(slim(model, z)(z), model(z))


def test_a_grouped_conv_transpose_has_no_output_units_to_group() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="groups=2 has no output units"):
        output_groups(model, ["0.weight"])


def test_recognising_layers_imports_no_optional_package() -> None:
    script = (
        "import sys, torch, haloprune\n"
        "from haloprune.core.params import select_parameters\n"
        "from haloprune.pruning.slim import remove_dead_units\n"
        "m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ConvTranspose1d(4, 2, 3))\n"
        "assert select_parameters(m) == ['0.weight', '1.weight']\n"
        "remove_dead_units(m)\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_transformers_conv1d_layout() -> None:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(nf=6, nx=4)  # weight (in, out) = (4, 6)
    model = nn.Sequential(layer)
    assert layer_kind(layer) == "linear" and output_dim(layer) == 1
    assert select_parameters(model) == ["0.weight"]
    groups = output_groups(model, ["0.weight", "0.bias"])
    assert groups.counts == [6] and groups.sizes == [5]
    cost = count_cost(model, torch.randn(2, 7, 4), nonzero_only=False)
    assert (cost.params, cost.macs) == (24, 24 * 7)  # once per token
