"""VGG-16 with BatchNorm, CIFAR variant ("rethinking network pruning"; the HALO reference's ``vgg16_bn``).

``vgg16-bn`` is haloprune's: bias-free convolutions (a BatchNorm follows each) with Kaiming (fan-out)
initialisation. ``vgg16-bn-reference`` is built as the HALO reference builds it (its
``models/cifar/vgg.py``): every convolution has a bias (initialised to zero; with HALO on CIFAR the
reference penalises it too), conv weights ~ N(0, 2 / (9 · in_channels)), the Linear classifier
~ N(0, 0.01) with a zero bias.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG16BN(nn.Module):
    """VGG-16 (config D) with BatchNorm and a single Linear classifier; ``width`` scales every conv.

    The reference's CIFAR model ends with a 2x2 average pool over the last feature map; here an adaptive
    average pool (the same on 32x32 CIFAR input) makes the net work on 28x28 (Fashion-MNIST) too.
    ``conv_bias`` and ``init`` (``"kaiming"`` or ``"reference"``): see the module doc.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        width: float = 1.0,
        *,
        conv_bias: bool = False,
        init: Literal["kaiming", "reference"] = "kaiming",
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
                nn.Conv2d(c, out, 3, padding=1, bias=conv_bias),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        if init == "reference":
            self._reference_init()
        elif init == "kaiming":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        else:
            raise ValueError(f"init must be 'kaiming' or 'reference', got {init!r}")

    @torch.no_grad()
    def _reference_init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.in_channels)))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.01)
                m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16_bn_reference(
    in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: float = 1.0
) -> VGG16BN:
    """VGG-16-bn as the HALO reference builds it: conv biases and its initialisation (module doc)."""
    return VGG16BN(in_channels, image_size, num_classes, width, conv_bias=True, init="reference")
