"""A small Vision Transformer for 28x28 / 32x32 images (Dosovitskiy et al. 2021), pre-norm.

Patch embedding (a ``patch`` x ``patch`` convolution with stride ``patch``), a class token and learned
position embeddings, ``depth`` blocks of ``x + Attention(LayerNorm(x))`` and ``x + MLP(LayerNorm(x))``, a
final LayerNorm and a Linear head on the class token.

The blocks are :mod:`haloprune.models.transformer`'s (heads explicit, every weight a plain ``nn.Linear``).
"""

from __future__ import annotations

import torch
from torch import nn

from haloprune.models.transformer import blocks, check_shape, init_linears


class ViT(nn.Module):
    """Vision Transformer (module doc); ``dim`` divisible by ``heads``, ``image_size`` by ``patch``.

    The defaults (41,770 parameters on Fashion-MNIST, 17 tokens of width 48) train 20 epochs of
    Fashion-MNIST in about 5 minutes on one CPU core (see docs/results/transformers.md)."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        *,
        dim: int = 48,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        patch: int = 7,
    ) -> None:
        super().__init__()
        check_shape("vit", dim, depth, heads, mlp_ratio)
        if patch < 1:
            raise ValueError(f"vit: patch must be >= 1, got {patch}")
        if image_size % patch:
            raise ValueError(f"vit: image_size ({image_size}) must be divisible by patch ({patch})")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = blocks(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_linears(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (b, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
