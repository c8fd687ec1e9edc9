"""A small byte-level GPT (Radford et al. 2019), pre-norm, its output head tied to the token embedding.

A token embedding of the ``vocab_size`` byte values and learned position embeddings of ``context``
positions, ``depth`` causal blocks of ``x + Attention(LayerNorm(x))`` and ``x + MLP(LayerNorm(x))``
(:mod:`haloprune.models.transformer`: heads explicit, every q/k/v/proj/MLP weight a plain ``nn.Linear``,
so penalised and pruned), a final LayerNorm and a Linear head whose weight *is* the token embedding
(``head.weight is tok_emb.weight``). haloprune's default selection keeps that table dense, as the LLM
pruning tools do (:mod:`haloprune.core.params`: an embedding and any layer tied to it), and the position
embeddings with it.

It maps int64 bytes ``(batch, T)``, ``T <= context``, to logits ``(batch, vocab_size, T)``: the class
dimension second, PyTorch's convention for K-dimensional cross-entropy, so that
``F.cross_entropy(logits, next_bytes)`` is the mean next-byte loss and ``logits.argmax(1)`` the predicted
bytes; training and evaluation need nothing of their own for it.
"""

from __future__ import annotations

import torch
from torch import nn

from haloprune.models.transformer import blocks, check_shape, init_linears


def _check_input(x: torch.Tensor, context: int) -> torch.Tensor:
    """``x`` if it is ``(batch, T)`` with ``T <= context``, else a ValueError naming both."""
    if x.dim() != 2 or x.shape[1] > context:
        raise ValueError(
            f"gpt: takes bytes shaped (batch, T) with T <= its context {context}, got {tuple(x.shape)}"
        )
    return x


torch.fx.wrap("_check_input")  # one call in a traced graph (slim, ONNX), checked when the graph runs


class GPT(nn.Module):
    """Causal byte-level language model (module doc); ``dim`` divisible by ``heads``."""

    def __init__(
        self,
        vocab_size: int = 256,
        context: int = 128,
        *,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        check_shape("gpt", dim, depth, heads, mlp_ratio)
        for key, value in (("vocab_size", vocab_size), ("context", context)):
            if value < 1:
                raise ValueError(f"gpt: {key} must be >= 1, got {value}")
        self.context = context
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Embedding(context, dim)
        self.blocks = blocks(dim, depth, heads, mlp_ratio, causal=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied: one parameter, two names
        init_linears(self)  # the head's weight, the token embedding, with them
        nn.init.trunc_normal_(self.pos_emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x, self.context)
        h = self.tok_emb(x) + self.pos_emb(torch.arange(x.shape[1], device=x.device))
        return self.head(self.norm(self.blocks(h))).transpose(1, 2)
