"""VGG with BatchNorm, CIFAR variant (as in the HALO reference / "rethinking network pruning")."""

from __future__ import annotations

import torch
from torch import nn

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG16BN(nn.Module):
    """VGG-16 (config D) with BatchNorm and a single Linear classifier; ``width`` scales every conv.

    The reference's CIFAR model ends with a 2x2 average pool over the last feature map; here an adaptive
    average pool makes the same net work on 28x28 (Fashion-MNIST) and 32x32 (CIFAR) inputs.
    """

    def __init__(
        self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, width: float = 1.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, round(int(v) * width))
            layers += [
                nn.Conv2d(c, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))
