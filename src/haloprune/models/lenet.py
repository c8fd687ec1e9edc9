"""LeNet family used by the HALO paper and the classic pruning literature (28x28 grey input)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet300100(nn.Module):
    """784-300-100-10 fully connected, ReLU (LeCun et al. 1998; Han et al. 2015)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 as in the HALO reference: conv 6@5x5 (pad 2), pool, conv 16@5x5, pool, fc 120-84-10."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = ((image_size // 2) - 4) // 2
        self.fc3 = nn.Linear(16 * side * side, 120)
        self.fc4 = nn.Linear(120, 84)
        self.fc5 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc3(x.flatten(1)))
        x = F.relu(self.fc4(x))
        return self.fc5(x)


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet-5 (20-50-500), the model of the Han et al. / SparseVD MNIST numbers."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc3 = nn.Linear(50 * side * side, 500)
        self.fc4 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = F.relu(self.fc3(x.flatten(1)))
        return self.fc4(x)
