"""Slimming: the dense small model computes what the masked model computes (eval mode, random inputs),
for every shipped model and a residual model, and it really is smaller."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import haloprune
from haloprune import build_model, global_magnitude_prune
from haloprune.pruning import count_cost, group_prune
from haloprune.pruning.masks import attach_mask, get_masks
from haloprune.pruning.slim import AddConstant, SelectFeatures, slim

pytestmark = pytest.mark.usefixtures("one_thread")


MODELS = {  # name: (kwargs, one input's shape)
    "lenet-300-100": ({}, (1, 28, 28)),
    "lenet-5": ({}, (1, 28, 28)),
    "lenet-5-caffe": ({}, (1, 28, 28)),
    "vgg16-bn": ({"width": 0.125}, (1, 28, 28)),
    "resnet18": ({"width": 0.125}, (3, 32, 32)),
    "resnet50": ({"width": 0.0625}, (3, 32, 32)),
}


def _trained_like(name: str) -> nn.Module:
    """A model with nontrivial BatchNorm statistics and biases."""
    kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, **kwargs, in_channels=shape[0], image_size=shape[1])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def _assert_same(a: nn.Module, b: nn.Module, shape=(8, 1, 28, 28)) -> None:
    for seed in range(3):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        assert (a(x) - b(x)).abs().max().item() <= 1e-5


def _weights(model: nn.Module, shape=(1, 28, 28)) -> int:
    return count_cost(model, torch.zeros(1, *shape), nonzero_only=False).params


class _Residual(nn.Module):
    """conv-bn-relu stem, an identity block and a strided block with a 1x1 shortcut, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.a1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.a2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.b1 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(12)
        self.b2 = nn.Conv2d(12, 12, 1, bias=False)  # 1x1, no padding: constants fold into it
        self.bn4 = nn.BatchNorm2d(12)
        self.short = nn.Conv2d(8, 12, 1, stride=2, bias=False)
        self.bn5 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        out = F.relu(self.bn1(self.a1(x)))
        out = self.bn2(self.a2(out))
        out += x
        x = F.relu(out)
        out = F.relu(self.bn3(self.b1(x)))
        out = self.bn4(self.b2(out)) + self.bn5(self.short(x))
        x = F.relu(out)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _residual() -> nn.Module:
    torch.manual_seed(0)
    model = _Residual()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _kill(model: nn.Module, name: str, units: list[int]) -> None:
    p = model.get_parameter(name)
    keep = torch.ones(p.shape[0], dtype=torch.bool)
    keep[units] = False
    attach_mask(model, name, keep.view(-1, *([1] * (p.dim() - 1))).expand_as(p))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_slimmed_unstructured_model_matches_masked_model(name: str, sparsity: float) -> None:
    model = _trained_like(name)
    shape = MODELS[name][1]
    global_magnitude_prune(model, sparsity)
    small = slim(model, torch.zeros(1, *shape))
    _assert_same(model, small, (8, *shape))
    assert not get_masks(small) and get_masks(model)  # the copy is dense, the model untouched
    assert _weights(small, shape) <= _weights(model, shape)


@pytest.mark.parametrize("name", list(MODELS))
def test_slimmed_group_pruned_model_matches_and_is_smaller(name: str) -> None:
    model = _trained_like(name)
    kwargs, shape = MODELS[name]
    x = torch.zeros(1, *shape)
    dense = count_cost(model, x, nonzero_only=False)
    group_prune(model, x, params=dense.params // 4)
    small = slim(model, x)
    _assert_same(model, small, (8, *shape))
    cost = count_cost(small, x, nonzero_only=False)
    assert cost.params <= dense.params // 4 and cost.macs < dense.macs
    # a state_dict with the group masks loads into a fresh model and slims to the same thing
    fresh = build_model(name, **kwargs, in_channels=shape[0], image_size=shape[1])
    haloprune.load_state_dict(fresh, model.state_dict())
    _assert_same(slim(fresh.eval(), x), small, (8, *shape))


def test_lenet300_dead_neurons_and_pixels_are_removed_and_biases_folded() -> None:
    torch.manual_seed(0)
    model = build_model("lenet-300-100").eval()
    with torch.no_grad():
        model.fc1.bias.uniform_(-1, 1)  # the dead rows below keep these: constants relu(b) for fc2
    keep1 = torch.zeros(300, dtype=torch.bool)
    keep1[:40] = True
    pixels = torch.zeros(784, dtype=torch.bool)
    pixels[100:600] = True
    attach_mask(model, "fc1.weight", keep1[:, None] & pixels[None, :])
    keep2 = torch.zeros(100, dtype=torch.bool)
    keep2[::4] = True
    attach_mask(model, "fc2.weight", keep2[:, None].expand(100, 300))
    small = slim(model, torch.zeros(1, 1, 28, 28))
    _assert_same(model, small)
    assert (small.fc1.in_features, small.fc1.out_features) == (500, 40)
    assert (small.fc2.in_features, small.fc2.out_features) == (40, 25)
    assert (small.fc3.in_features, small.fc3.out_features) == (25, 10)
    assert any(isinstance(m, SelectFeatures) for m in small.modules())
    # the constants relu(b) of the 260 dead fc1 units went into fc2's bias
    b = torch.relu(model.fc1.bias[40:])
    expected = model.fc2.bias + model.fc2.weight[:, 40:] @ b
    torch.testing.assert_close(small.fc2.bias, expected[keep2], rtol=1e-6, atol=1e-6)


def test_residual_add_keeps_a_channel_alive_in_any_input_and_drops_dead_ones() -> None:
    model = _residual()
    _kill(model, "a2.weight", [0, 1, 2, 7])  # 0-2 dead on the branch, alive on the identity path: kept
    _kill(model, "stem.weight", [7])  # 7 dead in both inputs of the add: removed from the whole stream
    _kill(model, "a1.weight", [0, 1, 2, 3])  # inner channels of a block: removed (BN constants folded)
    _kill(model, "b1.weight", [0, 1, 2, 3, 4])  # inner channels before a 1x1 conv: folded, removed
    _kill(model, "b2.weight", [5, 6])
    _kill(model, "short.weight", [5, 6, 7])  # 5, 6 dead in both inputs of the add
    x = torch.zeros(1, 1, 28, 28)
    small = slim(model, x)
    _assert_same(model, small)
    assert small.a2.out_channels == 7 and small.stem.out_channels == 7 and small.a1.in_channels == 7
    assert any(isinstance(m, AddConstant) for m in small.modules())  # BN constants into padded convs
    with pytest.raises(ValueError, match="runs only at the image size of the example"):
        small(torch.zeros(1, 1, 32, 32))  # another size: a clear error, never a silent broadcast
    assert small.a1.out_channels == 4 and small.b1.out_channels == 7
    assert small.b2.out_channels == 10 and small.short.out_channels == 10 and small.fc.in_features == 10
    assert small.bn4.running_mean.shape == (10,)
    assert count_cost(small, x, nonzero_only=False).macs < count_cost(model, x, nonzero_only=False).macs


def test_residual_model_group_pruned_and_slimmed_matches() -> None:
    model = _residual()
    x = torch.zeros(1, 1, 28, 28)
    full = count_cost(model, x, nonzero_only=False)
    group_prune(model, x, macs=full.macs // 3)
    small = slim(model, x)
    _assert_same(model, small)
    assert count_cost(small, x, nonzero_only=False).macs <= full.macs // 3


def test_unknown_operations_keep_their_channels() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 5)
            self.fc2 = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            return self.fc2(torch.sigmoid(h) * h)  # not known to slim: every channel of h stays

    model = Odd().eval()
    _kill(model, "fc1.weight", [0, 1])
    small = slim(model, torch.zeros(1, 6))
    _assert_same(model, small, shape=(4, 6))
    assert small.fc1.out_features == 5


def test_untraceable_model_gives_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    with pytest.raises(haloprune.core.errors.HaloPruneError, match="trace"):
        slim(Branchy(), torch.zeros(1, 4))


def test_flatten_whose_features_are_all_unread_still_matches_its_input() -> None:
    """Regression: a flatten nobody reads keeps one feature; its channel must then be kept upstream too."""

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.f1 = nn.Linear(4 * 6 * 6, 3)
            self.f2 = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.conv(x))
            return self.f1(h.flatten(1)) + self.f2(F.adaptive_avg_pool2d(h, 1).flatten(1))

    model = TwoHeads().eval()
    attach_mask(model, "f1.weight", torch.zeros(3, 144, dtype=torch.bool))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[:, 0] = False
    attach_mask(model, "f2.weight", mask)
    small = slim(model, torch.zeros(1, 1, 8, 8))
    _assert_same(model, small, (4, 1, 8, 8))
    assert small.conv.out_channels == 4 and small.f1.in_features == 1 and small.f2.in_features == 3


def test_the_slimmed_copy_has_no_masks_and_no_mask_links() -> None:
    model = _trained_like("lenet-5")
    global_magnitude_prune(model, 0.9)
    small = slim(model, torch.zeros(1, 1, 28, 28))
    assert not get_masks(small) and not any(k.endswith("_mask") for k in small.state_dict())
    assert not any(hasattr(p, "_haloprune_mask") for p in small.parameters())
    assert all(hasattr(model.get_parameter(n), "_haloprune_mask") for n in get_masks(model))


def test_sync_batchnorm_is_slimmed_like_batchnorm() -> None:
    """SyncBatchNorm (what distributed CUDA training leaves) is a BatchNorm: its dead channels go too."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_trained_like("vgg16-bn")).eval()
    x = torch.zeros(1, 1, 28, 28)
    group_prune(model, x, params=count_cost(model, x, nonzero_only=False).params // 4)
    small = slim(model, x)
    _assert_same(model, small)
    before = sum(m.num_features for m in model.modules() if isinstance(m, nn.SyncBatchNorm))
    after = sum(m.num_features for m in small.modules() if isinstance(m, nn.SyncBatchNorm))
    assert 0 < after < before
