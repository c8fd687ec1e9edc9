"""The small Vision Transformer (haloprune.models.vit): shapes, its config keys, HALO and pruning on it."""

from __future__ import annotations

from pathlib import Path

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
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100) and cifar.pos_embed.shape == (1, 65, 48)
    # the defaults, sized for 20 epochs of Fashion-MNIST in about 5 minutes on one core
    assert sum(p.numel() for p in build_model("vit").parameters()) == 41_770


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
    # pruned to 80%: the smallest go, and zeros beyond them (an overshoot) stay zeros
    assert sparsity_report(vit)[-1].nonzero == min(total.nonzero, total.params - round(0.8 * total.params))
    opt.zero_grad()
    F.cross_entropy(vit(x), y).backward()
    opt.step()  # HALO is still attached: it may zero more weights, but no pruned one comes back
    assert all(not vit.get_parameter(n)[~m].any() for n, m in masks.items())


EMBED = ["patch_embed.*", "head.*"]  # the residual stream's writers and the classifier: not unit-grouped


def test_heads_and_mlp_neurons_are_the_groups_of_structured_penalties() -> None:
    """group-halo / group-lasso on a ViT: one group per attention head (its q, k, v rows and biases and its
    proj columns) and per MLP hidden neuron (its fc1 row and bias and its fc2 column)."""
    from haloprune.penalties import build_penalty

    torch.manual_seed(0)
    vit = build_model("vit", dim=32, depth=2, heads=4, mlp_ratio=2.0)
    halo = build_penalty("group-halo", vit, xi=1e-3, psi=1e-3, include_bias=True, exclude=EMBED)
    assert {k: v.numel() for k, v in halo.lambdas().items()} == {
        "blocks.0.attn.heads": 4,
        "blocks.0.mlp.neurons": 64,
        "blocks.1.attn.heads": 4,
        "blocks.1.mlp.neurons": 64,
    }
    attn, mlp = vit.blocks[1].attn, vit.blocks[1].mlp
    h, d = 2, 8
    rows = [attn.qkv.weight[j * 32 + h * d : j * 32 + (h + 1) * d].flatten() for j in range(3)]
    biases = [attn.qkv.bias[j * 32 + h * d : j * 32 + (h + 1) * d] for j in range(3)]
    head = torch.cat([*rows, *biases, attn.proj.weight[:, h * d : (h + 1) * d].flatten()])
    neuron = torch.cat([mlp.fc1.weight[5], mlp.fc1.bias[5:6], mlp.fc2.weight[:, 5]])
    norms = halo.group_norms().detach()
    assert torch.allclose(norms[4 + 64 + h], head.norm(), atol=1e-6)
    assert torch.allclose(norms[4 + 64 + 4 + 5], neuron.norm(), atol=1e-6)
    lasso = build_penalty("group-lasso", vit, xi=1e-3, exclude=EMBED)
    assert lasso.num_groups == 2 * (4 + 64) and lasso.groups.sizes == [3 * 8 * 32 + 32 * 8, 32 + 32] * 2


@pytest.mark.parametrize("budget", ["macs", "params"])
def test_group_prune_and_slim_remove_heads_and_neurons_with_equal_outputs(budget: str) -> None:
    """``group_prune`` to half the MACs (or parameters) masks whole heads and neurons; ``slim`` returns a
    smaller dense ViT (fewer heads, narrower MLPs) whose outputs equal the masked model's (eval mode)."""
    from haloprune import count_cost, group_prune, slim

    torch.manual_seed(0)
    vit = build_model("vit", dim=32, depth=2, heads=4).eval()
    x = torch.randn(4, 1, 28, 28)
    dense = count_cost(vit, x, nonzero_only=False)
    target = getattr(dense, budget) // 2
    group_prune(vit, x, exclude=EMBED, **{budget: target})
    small = slim(vit, x)
    cost = count_cost(small, x, nonzero_only=False)
    assert getattr(cost, budget) <= target < getattr(dense, budget)
    assert (small(x) - vit(x)).abs().max() < 1e-5
    qkv = sum(small.get_submodule(f"blocks.{i}.attn.qkv").out_features for i in range(2))
    hidden = sum(small.get_submodule(f"blocks.{i}.mlp.fc1").out_features for i in range(2))
    assert qkv < 2 * 96 or hidden < 128


def test_dead_units_fold_their_constant_output_and_live_ones_are_refused() -> None:
    """A head whose v rows are zero outputs its v bias; a neuron whose fc1 row is zero outputs GELU(bias):
    both are removed with their constants folded into the next bias, exactly."""
    from haloprune import slim
    from haloprune.pruning.slim import remove_dead_units

    torch.manual_seed(0)
    vit = build_model("vit", dim=32, depth=1, heads=4).eval()
    attn, mlp = vit.blocks[0].attn, vit.blocks[0].mlp
    with torch.no_grad():
        attn.qkv.weight[2 * 32 + 8 : 2 * 32 + 16] = 0  # head 1's v rows; its v bias stays
        attn.qkv.bias.normal_()
        mlp.fc1.weight[[3, 7]] = 0  # two neurons whose input weights are all zero
        mlp.fc1.bias.normal_()
    x = torch.randn(3, 1, 28, 28)
    small = slim(vit, x)
    assert (small(x) - vit(x)).abs().max() < 1e-5
    # the traced copy keeps the leaf layers: 3 heads of 8 in qkv, 62 hidden neurons
    assert small.get_submodule("blocks.0.attn.qkv").out_features == 3 * 3 * 8
    assert small.get_submodule("blocks.0.mlp.fc1").out_features == 62
    with pytest.raises(ValueError, match="only heads whose output is constant"):
        vit.blocks[0].attn.remove_units("head", torch.tensor([False, True, True, True]))
    assert remove_dead_units(build_model("lenet-300-100")) == 0  # nothing declares units there


def test_a_slimmed_vit_exports_to_onnx(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    import haloprune
    from haloprune import count_cost, group_prune

    torch.manual_seed(0)
    vit = build_model("vit", dim=32, depth=2, heads=4).eval()
    x1 = torch.zeros(1, 1, 28, 28)
    group_prune(vit, x1, macs=count_cost(vit, x1, nonzero_only=False).macs // 2, exclude=EMBED)
    path = haloprune.export.export_onnx(vit, tmp_path / "vit.onnx", x1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 1, 28, 28)
        (out,) = session.run(None, {"input": x.numpy()})
        assert abs(out - vit(x).detach().numpy()).max() <= 1e-5


@pytest.mark.slow
def test_structured_vit_benchmark_quick_slims_and_times_in_both_runtimes(
    tmp_path: Path, real_fmnist: Path
) -> None:
    """benchmarks/vit_structured.py --quick: trains, group-prunes and slims a ViT on real data, checks each
    runtime's outputs against its network, and writes the timing of every form at batch 1 and 256."""
    import json
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "vit_structured.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--out-dir", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HALOPRUNE_DATA": str(real_fmnist)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "b-quick" / "vit_structured.json").read_text())
    dense, *pruned = result["rows"]
    assert [r["macs"] <= dense["macs"] // d for r, d in zip(pruned, (2, 2, 4, 4), strict=True)] == [True] * 4
    forms = set(result["timing"]["256"]["cpu"])
    assert forms == {f"{n} {r}" for n in ("dense", "2x", "4x") for r in ("eager", "onnxruntime")}
