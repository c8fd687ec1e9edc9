"""A small Vision Transformer for 28x28 / 32x32 images (Dosovitskiy et al. 2021), pre-norm.

Patch embedding (a ``patch`` x ``patch`` convolution with stride ``patch``), a class token and learned
position embeddings, ``depth`` blocks of ``x + Attention(LayerNorm(x))`` and ``x + MLP(LayerNorm(x))``, a
final LayerNorm and a Linear head on the class token.

The attention keeps its heads explicit — ``qkv`` (``dim`` → 3 · heads · head_dim: all queries, then all
keys, then all values, head by head) and ``proj`` (heads · head_dim → ``dim``) are plain ``nn.Linear``
layers — so that every weight is penalised and pruned like any Linear layer's, and a head (its q/k/v rows
and its ``proj`` columns) or an MLP hidden neuron (its ``fc1`` row and ``fc2`` column) is a group that can
be removed from the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention over ``(batch, tokens, dim)``; ``heads`` x ``head_dim`` inner width."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, head_dim)
        return self.proj(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer (module doc); ``dim`` divisible by ``heads``, ``image_size`` by ``patch``."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        *,
        dim: int = 64,
        depth: int = 3,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        patch: int = 7,
    ) -> None:
        super().__init__()
        for key, value in (("dim", dim), ("depth", depth), ("heads", heads), ("patch", patch)):
            if value < 1:
                raise ValueError(f"vit: {key} must be >= 1, got {value}")
        if dim % heads:
            raise ValueError(f"vit: dim ({dim}) must be divisible by heads ({heads})")
        if image_size % patch:
            raise ValueError(f"vit: image_size ({image_size}) must be divisible by patch ({patch})")
        if mlp_ratio <= 0:
            raise ValueError(f"vit: mlp_ratio must be > 0, got {mlp_ratio}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(
            *[Block(dim, heads, max(1, round(dim * mlp_ratio))) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (b, tokens, dim)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
