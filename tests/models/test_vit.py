"""The small Vision Transformer (haloprune.models.vit): shapes, its config keys, HALO and pruning on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haloprune import HALO, global_magnitude_prune, sparsity_report
from haloprune.build import build_network
from haloprune.config import TrainConfig, load_config
from haloprune.core.errors import ConfigError
from haloprune.core.params import select_parameters
from haloprune.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_backward_and_what_is_prunable() -> None:
    torch.manual_seed(0)
    vit = build_model("vit", dim=32, depth=2, heads=4, patch=7)
    x = torch.randn(5, 1, 28, 28)
    out = vit(x)
    assert out.shape == (5, 10)
    F.cross_entropy(out, torch.randint(0, 10, (5,))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vit.parameters())
    names = select_parameters(vit)
    assert names == [
        "patch_embed.weight",
        *[
            f"blocks.{i}.{m}.weight"
            for i in range(2)
            for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
        ],
        "head.weight",
    ]
    assert vit.blocks[0].attn.qkv.weight.shape == (3 * 32, 32) and vit.blocks[0].mlp.fc1.out_features == 64
    cifar = build_model("vit", in_channels=3, image_size=32, num_classes=100, patch=4)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100) and cifar.pos_embed.shape == (1, 65, 64)


def test_attention_equals_torch_multihead_attention_with_the_same_weights() -> None:
    """The explicit-heads attention is standard multi-head attention (q, k, v packed head by head)."""
    torch.manual_seed(0)
    attn = build_model("vit", dim=32, heads=4).blocks[0].attn
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(3, 17, 32)
    assert torch.allclose(attn(x), mha(x, x, x, need_weights=False)[0], atol=1e-6)


def test_shape_keys_in_the_model_config_and_bad_shapes() -> None:
    cfg = load_config(
        TrainConfig, None, ['model.name="vit"', "model.dim=48", "model.heads=3", "model.depth=1"]
    )
    vit = build_network(cfg)
    assert vit.blocks[0].attn.heads == 3 and len(vit.blocks) == 1 and vit.head.in_features == 48
    with pytest.raises(ConfigError, match="divisible by heads"):
        build_network(load_config(TrainConfig, None, ['model.name="vit"', "model.dim=50", "model.heads=4"]))
    with pytest.raises(ConfigError, match="divisible by patch"):
        build_network(load_config(TrainConfig, None, ['model.name="vit"', "model.patch=5"]))
    with pytest.raises(ConfigError, match=r"model\.heads: lenet-300-100 has no heads setting"):
        build_network(load_config(TrainConfig, None, ["model.heads=4"]))
    with pytest.raises(ConfigError, match=r"model\.dim"):
        load_config(TrainConfig, None, ['model.name="vit"', "model.dim=0"])


def test_halo_target_mode_and_pruning_on_the_vit() -> None:
    """HALO told 80% with AdamW leaves that fraction of the ViT's weights at exactly zero; pruning then
    removes nothing else and the masks hold."""
    torch.manual_seed(0)
    vit = build_model("vit", dim=32, depth=2, heads=4)
    halo = HALO(vit, target_sparsity=0.8, ramp_end=0.6)
    opt = torch.optim.AdamW(vit.parameters(), lr=2e-3, weight_decay=1e-2)
    steps = 300
    halo.attach(opt, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(vit(x), y).backward()
        opt.step()
    total = sparsity_report(vit)[-1]
    assert 0.78 < total.sparsity < 0.83  # at exactly zero after training (it may overshoot a little)
    masks = global_magnitude_prune(vit, 0.8)
    assert sparsity_report(vit)[-1].nonzero == total.params - round(0.8 * total.params)
    opt.zero_grad()
    F.cross_entropy(vit(x), y).backward()
    opt.step()  # HALO is still attached: it may zero more weights, but no pruned one comes back
    assert all(not vit.get_parameter(n)[~m].any() for n, m in masks.items())
