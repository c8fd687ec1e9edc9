"""Turning a config into objects (haloprune.build): the network for its data, saved states rebuilt."""

from __future__ import annotations

import pytest
import torch

from haloprune.build import build_network, network_kwargs
from haloprune.config import TrainConfig, load_config
from haloprune.core.errors import ConfigError
from haloprune.core.params import select_parameters
from haloprune.experiments.config import SweepConfig


def test_config_builds_the_network_for_its_data() -> None:
    cfg = load_config(TrainConfig, None, ['data.name="cifar100"', 'model.name="resnet18"', "model.width=0.5"])
    assert network_kwargs(cfg) == {"in_channels": 3, "image_size": 32, "num_classes": 100, "width": 0.5}
    padded = load_config(TrainConfig, None, ['model.name="vgg16-bn"', "data.pad_to=32"])
    assert network_kwargs(padded) == {"in_channels": 1, "image_size": 32, "num_classes": 10}
    assert build_network(padded)(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ConfigError, match="lenet-300-100 has no width"):
        build_network(load_config(TrainConfig, None, ["model.width=0.5"]))


def test_saved_state_rebuilds_for_its_data_and_scope(tmp_path) -> None:
    """Sweep reports rebuild a job's network from its run part (was: the model name only, so any
    non-default width, dataset or scope failed to load or was pruned in the wrong layers)."""
    from haloprune.experiments.analysis import load_state_model

    sets = [
        'methods.d={kind="penalty"}',
        'data.name="cifar100"',
        'model.name="resnet18"',
        "model.width=0.125",
    ]
    cfg = load_config(SweepConfig, None, [*sets, 'prune.scope="conv"'])
    net = build_network(cfg)
    torch.save({"model": net.state_dict()}, tmp_path / "s.pt")
    model, _ = load_state_model(tmp_path / "s.pt", cfg.run_part(), sparsity=0.9)
    assert model.classifier.out_features == 100
    assert torch.count_nonzero(model.classifier.weight) == model.classifier.weight.numel()  # not in scope
    conv = [model.get_parameter(n) for n in select_parameters(model, scope="conv")]
    zeros = sum(int((p == 0).sum()) for p in conv)
    assert zeros == round(0.9 * sum(p.numel() for p in conv))
