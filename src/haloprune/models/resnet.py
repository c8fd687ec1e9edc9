"""ResNet-18 / ResNet-50 in their CIFAR form (He et al. 2016, as used for CIFAR pruning benchmarks).

The CIFAR stem is a single 3x3 convolution with stride 1 and no max-pool, so a 32x32 image keeps its
resolution through the first stage; stages 2-4 halve it. ``width`` multiplies every stage's channel count
(64, 128, 256, 512 at width 1), which gives CPU-sized versions of the same architecture. Every conv has
no bias (a BatchNorm follows it); the classifier is one Linear layer after global average pooling.
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
    """CIFAR ResNet: 3x3 stem, four stages of ``blocks`` residual blocks, global average pool, Linear."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks: tuple[int, int, int, int],
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        planes = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
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
