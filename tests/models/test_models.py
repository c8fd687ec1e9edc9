"""The conv nets of the CIFAR experiments: shapes, sizes, width."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from haloprune.core.params import select_parameters
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
