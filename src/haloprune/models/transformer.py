"""The transformer parts the ViT and the GPT share: multi-head self-attention (bidirectional, or causal for a
language model), the MLP and the pre-norm block.

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

from haloprune.core.layers import UnitPart, Units


def _keep_linear(
    layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    """A new Linear with only the given output rows / input columns of ``layer`` (bool masks)."""
    w = layer.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    new = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach()[rows] if rows is not None else layer.bias.detach())
    return new


class Attention(nn.Module):
    """Multi-head self-attention over ``(batch, tokens, dim)``; ``heads`` x ``head_dim`` inner width.
    ``causal``: token ``t`` attends to tokens ``0..t`` only (a language model's)."""

    def __init__(self, dim: int, heads: int, head_dim: int, causal: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim, self.causal = heads, head_dim, causal
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def structured_units(self) -> list[Units]:
        """Its heads: head ``h`` is its q, k and v rows of ``qkv`` (weights and biases) and its columns of
        ``proj``."""
        inner = self.heads * self.head_dim
        rows = [
            UnitPart(p, 0, j * inner, self.head_dim) for p in ("qkv.weight", "qkv.bias") for j in range(3)
        ]
        return [Units("head", self.heads, (*rows, UnitPart("proj.weight", 1, 0, self.head_dim)))]

    @torch.no_grad()
    def dead_units(self, kind: str) -> torch.Tensor:
        """Heads whose output is a constant: zero ``proj`` columns, or zero v rows (softmax weights sum to
        one, so the head then outputs its v bias, which folds into ``proj.bias``)."""
        inner = self.heads * self.head_dim
        v_rows = self.qkv.weight[2 * inner :].view(self.heads, -1)
        cols = self.proj.weight.t().reshape(self.heads, -1)
        return (v_rows == 0).all(1) | (cols == 0).all(1)

    @torch.no_grad()
    def remove_units(self, kind: str, keep: torch.Tensor) -> None:
        """Remove the heads ``keep`` leaves out (each must be dead), folding their constant outputs into
        ``proj.bias``."""
        dead = self.dead_units(kind)
        if (~keep & ~dead).any():
            raise ValueError("only heads whose output is constant can be removed")
        d, inner = self.head_dim, self.heads * self.head_dim
        keep_cols = keep.repeat_interleave(d)
        if self.qkv.bias is not None and self.proj.bias is not None:
            v_bias = self.qkv.bias[2 * inner :]
            self.proj.bias += self.proj.weight[:, ~keep_cols] @ v_bias[~keep_cols]
        self.qkv = _keep_linear(self.qkv, rows=keep_cols.repeat(3))
        self.proj = _keep_linear(self.proj, cols=keep_cols)
        self.heads = int(keep.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # written without unpacking shapes, so that torch.fx can trace it (slim, ONNX)
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)  # (b, h, t, d)
        return self.proj(y.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def structured_units(self) -> list[Units]:
        """Its hidden neurons: neuron ``j`` is row ``j`` of ``fc1`` (weight and bias) and column ``j`` of
        ``fc2``."""
        parts = (
            UnitPart("fc1.weight", 0, 0, 1),
            UnitPart("fc1.bias", 0, 0, 1),
            UnitPart("fc2.weight", 1, 0, 1),
        )
        return [Units("neuron", self.fc1.out_features, parts)]

    @torch.no_grad()
    def dead_units(self, kind: str) -> torch.Tensor:
        """Neurons whose contribution is a constant: a zero ``fc2`` column, or a zero ``fc1`` row (the
        neuron then outputs GELU(its bias), which folds into ``fc2.bias``)."""
        return (self.fc1.weight == 0).all(1) | (self.fc2.weight == 0).all(0)

    @torch.no_grad()
    def remove_units(self, kind: str, keep: torch.Tensor) -> None:
        """Remove the neurons ``keep`` leaves out (each must be dead), folding their constant outputs into
        ``fc2.bias``."""
        if (~keep & ~self.dead_units(kind)).any():
            raise ValueError("only neurons whose output is constant can be removed")
        if self.fc1.bias is not None and self.fc2.bias is not None:
            self.fc2.bias += self.fc2.weight[:, ~keep] @ F.gelu(self.fc1.bias[~keep])
        self.fc1 = _keep_linear(self.fc1, rows=keep)
        self.fc2 = _keep_linear(self.fc2, cols=keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (``causal``: its attention's)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim // heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def check_shape(name: str, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
    """A ValueError naming the model ``name`` and the setting, for a shape :func:`blocks` cannot build."""
    for key, value in (("dim", dim), ("depth", depth), ("heads", heads)):
        if value < 1:
            raise ValueError(f"{name}: {key} must be >= 1, got {value}")
    if dim % heads:
        raise ValueError(f"{name}: dim ({dim}) must be divisible by heads ({heads})")
    if mlp_ratio <= 0:
        raise ValueError(f"{name}: mlp_ratio must be > 0, got {mlp_ratio}")


def blocks(dim: int, depth: int, heads: int, mlp_ratio: float, causal: bool = False) -> nn.Sequential:
    """``depth`` pre-norm blocks of width ``dim``: ``heads`` heads, MLP hidden width ``dim · mlp_ratio``."""
    return nn.Sequential(*[Block(dim, heads, max(1, round(dim * mlp_ratio)), causal) for _ in range(depth)])


def init_linears(model: nn.Module) -> None:
    """Every Linear weight drawn from a normal of std 0.02 truncated at ±2, its bias zero (ViT, GPT-2)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
