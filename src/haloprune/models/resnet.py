"""ResNets for 32x32 images: the ImageNet-style ResNet-18 / ResNet-50 with a CIFAR stem, and the CIFAR
ResNets of depth 6n + 2 (He et al. 2016, section 4.2) that the HALO paper uses.

``resnet18`` / ``resnet50``: four stages (64, 128, 256, 512 channels at width 1), BasicBlock x [2, 2, 2, 2]
or Bottleneck x [3, 4, 6, 3]; the stem is a single 3x3 convolution with stride 1 and no max-pool, so a
32x32 image keeps its resolution through the first stage; stages 2-4 halve it. ``resnet50`` has 23.7M
parameters with 100 classes: it is *not* the HALO paper's "ResNet-50".

``cifar-resnet{20,32,44,50,56,110}``: three stages of n = (depth − 2) / 6 BasicBlocks with 16, 32 and 64
channels, 1x1-conv + BatchNorm shortcuts where the shape changes (He et al.'s option B), global average
pool, Linear — the HALO reference's ``models/cifar/resnet.py``, whose "ResNet-50" on CIFAR-100
(``--depth 50``) is ``cifar-resnet50``: 764,404 parameters with 100 classes. (The reference's code would
switch to Bottleneck blocks from depth 54 on; the paper uses no such depth, and here 56 and 110 are He et
al.'s BasicBlock networks.)

``width`` multiplies every stage's channel count, which gives CPU-sized versions of the same
architectures. Every conv has no bias (a BatchNorm follows it), initialised N(0, 2 / fan_out) as in the
reference; the classifier is one Linear layer after global average pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bn_conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)
    )


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity when shapes agree, else a 1x1 projection (He et al.'s option B)."""
    return nn.Identity() if stride == 1 and c_in == c_out else _bn_conv(c_in, c_out, 1, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _bn_conv(c_in, planes, 3, stride)
        self.conv2 = _bn_conv(planes, planes, 3)
        self.shortcut = _shortcut(c_in, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4 (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = _bn_conv(c_in, planes, 1)
        self.conv2 = _bn_conv(planes, planes, 3, stride)
        self.conv3 = _bn_conv(planes, out, 1)
        self.shortcut = _shortcut(c_in, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.conv3(y) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with a CIFAR stem: 3x3 stem, one stage per entry of ``blocks`` (channels ``stage_planes``
    scaled by ``width``; default four stages of ``blocks`` residual blocks, global average pool, Linear."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks: tuple[int, ...],
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        stage_planes: tuple[int, ...] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        planes = [max(1, round(c * width)) for c in stage_planes]
        self.stem = nn.Sequential(_bn_conv(in_channels, planes[0], 3), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        c = planes[0]
        for i, (p, n) in enumerate(zip(planes, blocks, strict=True)):
            layers = []
            for j in range(n):
                layers.append(block(c, p, stride=2 if i > 0 and j == 0 else 1))
                c = p * block.expansion
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet18(in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-18 (BasicBlock x [2, 2, 2, 2]), CIFAR stem; ``image_size`` is accepted for a uniform API."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, width)


def resnet50(in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-50 (Bottleneck x [3, 4, 6, 3]), CIFAR stem; ``image_size`` is accepted for a uniform API."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, width)


CIFAR_DEPTHS = (20, 32, 44, 50, 56, 110)


def cifar_resnet(
    depth: int, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: float = 1.0
) -> ResNet:
    """The CIFAR ResNet of ``depth`` = 6n + 2: BasicBlock x [n, n, n], 16/32/64 channels (module doc)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 50, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), in_channels, num_classes, width, stage_planes=(16, 32, 64))


def _cifar_factory(depth: int):
    def build(
        in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: float = 1.0
    ) -> ResNet:
        return cifar_resnet(depth, in_channels, image_size, num_classes, width)

    build.__name__ = build.__qualname__ = f"cifar_resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth}: BasicBlock x {(depth - 2) // 6} per stage, 16/32/64 channels."
    return build


CIFAR_RESNETS = {f"cifar-resnet{d}": _cifar_factory(d) for d in CIFAR_DEPTHS}
