"""The byte-level GPT (haloprune.models.gpt): logits with the class dimension second, causal attention, its
head tied to the token embedding and left dense by the default selection while every block Linear is
penalised and pruned, and its shape errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haloprune import HALO, global_magnitude_prune, sparsity_report
from haloprune.core.params import select_parameters
from haloprune.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCK_WEIGHTS = [
    f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
]


def tiny_gpt() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("gpt", context=16, dim=32, depth=2, heads=4)


def test_logits_put_the_byte_dimension_second_for_cross_entropy() -> None:
    gpt = tiny_gpt()
    x = torch.randint(0, 256, (3, 16))
    out = gpt(x)
    assert out.shape == (3, 256, 16)
    assert gpt(x[:, :5]).shape == (3, 256, 5)  # shorter windows than the context are fine
    loss = F.cross_entropy(out, torch.randint(0, 256, (3, 16)))  # (B, C, T) against (B, T)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpt.parameters())
    # the defaults: dim 128, depth 2, 4 heads, MLP 4x, 128 positions
    assert sum(p.numel() for p in build_model("gpt").parameters()) == 445_952


def test_attention_is_causal() -> None:
    gpt = tiny_gpt().eval()
    x = torch.randint(0, 256, (2, 16))
    later = x.clone()
    later[:, 9:] = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        a, b = gpt(x), gpt(later)
    assert torch.equal(a[..., :9], b[..., :9]) and not torch.equal(a[..., 9:], b[..., 9:])


def test_head_is_tied_and_dense_while_every_block_linear_is_penalised_and_pruned() -> None:
    gpt = tiny_gpt()
    assert gpt.head.weight is gpt.tok_emb.weight
    assert select_parameters(gpt) == BLOCK_WEIGHTS
    assert HALO(gpt, xi=1e-4, psi=1e-2).param_names == BLOCK_WEIGHTS
    assert [r.name for r in sparsity_report(gpt)[:-1]] == BLOCK_WEIGHTS
    # named by either of its names, the tied table is one parameter, selected once
    assert select_parameters(gpt, include=["head.weight"]) == ["tok_emb.weight", *BLOCK_WEIGHTS]
    table = gpt.tok_emb.weight.detach().clone()
    masks = global_magnitude_prune(gpt, 0.9)
    assert sorted(masks) == sorted(BLOCK_WEIGHTS)
    assert torch.equal(gpt.tok_emb.weight, table) and gpt.head.weight is gpt.tok_emb.weight
    assert sparsity_report(gpt)[-1].sparsity == pytest.approx(0.9, abs=1e-4)


def test_bad_shapes_and_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"gpt: dim \(30\) must be divisible by heads \(4\)"):
        build_model("gpt", dim=30)
    with pytest.raises(ValueError, match="gpt: context must be >= 1"):
        build_model("gpt", context=0)
    gpt = tiny_gpt()
    with pytest.raises(ValueError, match=r"T <= its context 16, got \(2, 17\)"):
        gpt(torch.zeros(2, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, T\)"):
        gpt(torch.zeros(16, dtype=torch.long))
