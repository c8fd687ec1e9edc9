"""Parameter selection (haloprune.core.params): attention projections and tied weights are selected once,
include/exclude globs, a glob that matches nothing is an error."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import haloprune
from haloprune import HALO, global_magnitude_prune
from haloprune.core.params import select_parameters


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok_emb.weight  # tied

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok_emb(idx)
        n = idx.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        h = h + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return self.head(h + self.mlp(h))


class TinyViT(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, stride=4)
        layer = nn.TransformerEncoderLayer(d, 2, 32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(h).mean(1))


def test_tied_embedding_is_penalised_pruned_and_counted_once() -> None:
    torch.manual_seed(0)
    model = TinyGPT()
    names = select_parameters(model, include=["tok_emb.weight"])
    assert names.count("tok_emb.weight") == 1 and "head.weight" not in names
    assert {"attn.in_proj_weight", "attn.out_proj.weight"} <= set(names)
    halo = HALO(model, xi=1e-4, psi=1e-2, include=["head.weight"])  # the alias names the same tensor
    assert halo.num_penalized == sum(p.numel() for n, p in model.named_parameters() if n in halo.param_names)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    halo.attach(opt)
    idx = torch.randint(0, 50, (4, 9))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
    global_magnitude_prune(model, 0.8, include=["tok_emb.weight"])
    assert model.head.weight is model.tok_emb.weight
    report = {r.name: r for r in haloprune.sparsity_report(model, include=["tok_emb.weight"])}
    assert "head.weight" not in report
    total = sum(r.params for r in report.values())
    zeros = sum(r.params - r.nonzero for r in report.values())
    assert zeros / total == pytest.approx(0.8, abs=1e-3)


def test_vit_attention_projections_are_selected_by_default_and_excludable() -> None:
    model = TinyViT()
    names = select_parameters(model)
    assert "encoder.layers.0.self_attn.in_proj_weight" in names
    assert "encoder.layers.1.self_attn.out_proj.weight" in names
    assert "patch.weight" in names and "head.weight" in names
    fewer = select_parameters(model, exclude=["patch.*", "head.*"])
    assert set(names) - set(fewer) == {"patch.weight", "head.weight"}
    halo = HALO(model, xi=1e-4, psi=1e-2, exclude=["patch.*"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    halo.attach(opt)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    global_magnitude_prune(model, 0.5)
    assert float((model.encoder.layers[0].self_attn.in_proj_weight == 0).float().mean()) > 0.1


@pytest.mark.parametrize("where", ["include", "exclude"])
def test_a_glob_that_matches_nothing_is_an_error(where: str) -> None:
    model = TinyViT()
    with pytest.raises(ValueError, match="enc0der"):
        select_parameters(model, **{where: ["enc0der.*"]})
    with pytest.raises(ValueError, match="enc0der"):
        HALO(model, xi=1e-4, psi=1e-2, **{where: ["enc0der.*"]})
    with pytest.raises(ValueError, match="enc0der"):
        global_magnitude_prune(model, 0.5, **{where: ["enc0der.*"]})
