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


def test_vgg16_bn_is_the_cifar_variant_without_conv_biases() -> None:
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


@pytest.mark.parametrize(
    ("depth", "n10", "n100"),
    [
        (20, 272_474, 278_324),
        (32, 466_906, 472_756),
        (44, 661_338, 667_188),
        (50, 758_554, 764_404),  # the HALO paper's CIFAR-100 "ResNet-50": its released checkpoint's count
        (56, 855_770, 861_620),
        (110, 1_730_714, 1_736_564),
    ],
)
def test_cifar_resnets_are_the_references_depth_6n_plus_2_networks(depth: int, n10: int, n100: int) -> None:
    net = build_model(f"cifar-resnet{depth}", num_classes=10)
    assert _n(net) == n10 and _n(build_model(f"cifar-resnet{depth}", num_classes=100)) == n100
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    blocks = (depth - 2) // 6
    assert len(convs) == 1 + 3 * 2 * blocks + 2  # stem, two per block, two 1x1 shortcuts
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    assert all(c.bias is None for c in convs)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnet_needs_depth_6n_plus_2() -> None:
    from haloprune.models.resnet import cifar_resnet

    with pytest.raises(ValueError, match="depth 6n \\+ 2"):
        cifar_resnet(51)


def test_vgg16_bn_reference_has_the_references_biases_and_initialisation() -> None:
    torch.manual_seed(0)
    vgg = build_model("vgg16-bn-reference", num_classes=100)
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.bias is not None and not c.bias.any() for c in convs)
    for c in convs:  # N(0, 2 / (9 in_channels))
        expected = (2.0 / (9 * c.in_channels)) ** 0.5
        assert abs(c.weight.std().item() / expected - 1) < (0.3 if c.weight.numel() < 5000 else 0.05)
    (fc,) = [m for m in vgg.modules() if isinstance(m, nn.Linear)]
    assert abs(fc.weight.std().item() - 0.01) < 0.001 and not fc.bias.any()
    plain = build_model("vgg16-bn", in_channels=3, image_size=32, num_classes=100)
    assert _n(vgg) == _n(plain) + sum(c.out_channels for c in convs)
    assert vgg(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    # with include_bias the conv biases are penalised, as the reference's CIFAR HALO does
    names = select_parameters(vgg, scope="conv", include_bias=True)
    assert sum(n.endswith(".bias") for n in names) == 13
