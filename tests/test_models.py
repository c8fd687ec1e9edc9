"""The conv nets of the CIFAR experiments: shapes, sizes, width, and how a config builds them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from haloprune.build import build_network, network_kwargs
from haloprune.config import TrainConfig, load_config, to_toml
from haloprune.core.errors import ConfigError
from haloprune.core.params import select_parameters
from haloprune.experiments.config import SweepConfig
from haloprune.models import build_model


def _n(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet_sizes_match_the_cifar_literature() -> None:
    # CIFAR ResNet-18 / -50 (3x3 stem, no max-pool), 10 classes: 11.17M and 23.52M parameters
    assert _n(build_model("resnet18")) == 11_173_962
    assert _n(build_model("resnet50")) == 23_520_842
    r18 = build_model("resnet18")
    assert isinstance(r18.stem[0][0], nn.Conv2d) and r18.stem[0][0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in r18.modules())
    assert all(m.bias is None for m in r18.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16-bn"])
def test_width_channels_and_classes(name: str) -> None:
    small = build_model(name, in_channels=1, image_size=32, num_classes=100, width=0.25)
    out = small(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 100)
    assert _n(small) < _n(build_model(name, num_classes=100)) / 10  # ~1/16 of the conv weights
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].out_channels == 16


def test_vgg16_bn_is_the_reference_cifar_variant() -> None:
    vgg = build_model("vgg16-bn", in_channels=3, image_size=32)
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in vgg.modules()) == 13
    linears = [m for m in vgg.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 512
    assert select_parameters(vgg, scope="conv") == [
        f"features.{i}.weight" for i in (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
    ]


def test_config_builds_the_network_for_its_data() -> None:
    cfg = load_config(TrainConfig, None, ['data.name="cifar100"', 'model.name="resnet18"', "model.width=0.5"])
    assert network_kwargs(cfg) == {"in_channels": 3, "image_size": 32, "num_classes": 100, "width": 0.5}
    padded = load_config(TrainConfig, None, ['model.name="vgg16-bn"', "data.pad_to=32"])
    assert network_kwargs(padded) == {"in_channels": 1, "image_size": 32, "num_classes": 10}
    assert build_network(padded)(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ConfigError, match="lenet-300-100 has no width"):
        build_network(load_config(TrainConfig, None, ["model.width=0.5"]))


def test_penalty_and_pruning_scope_must_agree() -> None:
    with pytest.raises(ConfigError, match=r"penalty.scope is 'all' but prune.scope is 'conv'"):
        load_config(TrainConfig, None, ['prune.scope="conv"', "penalty.name=halo"])
    ok = load_config(TrainConfig, None, ['prune.scope="conv"', "penalty.name=halo", 'penalty.scope="conv"'])
    assert ok.prune.scope == "conv"
    halo = 'methods.h={kind="penalty", params={penalty={name="halo"}}}'
    with pytest.raises(ConfigError, match=r"methods\.h: penalty\.scope"):
        load_config(SweepConfig, None, ['prune.scope="conv"', halo])


def test_new_fields_at_defaults_leave_old_dumps_unchanged() -> None:
    """Old run directories (config.toml compared as text) and sweep job keys stay valid."""
    text = to_toml(TrainConfig())
    for field in ("width", "pad_to", "augment", "amp", "channels_last", 'scope = "all"\n\n[penalty]'):
        assert field not in text
    sweep = load_config(SweepConfig, None, ['methods.d={kind="penalty"}'])
    assert "prune" not in sweep.run_part() and "width" not in sweep.run_part()["model"]
    conv = load_config(SweepConfig, None, ['methods.d={kind="penalty"}', 'prune.scope="conv"'])
    assert conv.run_part()["prune"] == {"scope": "conv"}


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
