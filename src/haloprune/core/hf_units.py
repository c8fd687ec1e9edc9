"""The removable units of Hugging Face ``transformers``' GPT-2 modules, declared from outside them.

GPT-2's ``GPT2Attention`` and ``GPT2MLP`` keep their layers in ``Conv1D`` (weight ``(in, out)``):

* a **head** ``h`` of the attention is its query, key and value columns of ``c_attn`` (columns
  ``[j·inner + h·d, j·inner + (h+1)·d)`` for ``j`` = q, k, v; with the bias entries) and its rows of
  ``c_proj`` (``[h·d, (h+1)·d)``);
* a **neuron** ``j`` of the MLP is column ``j`` of ``c_fc`` (and its bias) and row ``j`` of ``c_proj``.

So group-HALO, group lasso and :func:`haloprune.pruning.group_prune` act on whole heads and neurons of a
GPT-2, and :func:`haloprune.pruning.slim` removes the dead ones (a head whose value columns or output rows
are zero, a neuron whose ``c_fc`` column or ``c_proj`` row is zero), folding a constant output into
``c_proj``'s bias, as for haloprune's own ViT. The adapters are found by class name in ``sys.modules``
(:func:`haloprune.core.layers.units_of`): nothing here imports ``transformers``. Cross-attention layers
(``add_cross_attention``) declare no heads.
"""

from __future__ import annotations

import torch
from torch import nn

from haloprune.core.units import UnitPart, Units


@torch.no_grad()
def _keep_conv1d(
    layer: nn.Module, outputs: torch.Tensor | None = None, inputs: torch.Tensor | None = None
) -> None:
    """In place: keep only the output columns / input rows (bool masks) of a ``Conv1D``."""
    w = layer.weight.detach()
    w = w[inputs] if inputs is not None else w
    w = w[:, outputs] if outputs is not None else w
    layer.weight = nn.Parameter(w.clone(), requires_grad=layer.weight.requires_grad)
    if outputs is not None:
        layer.bias = nn.Parameter(
            layer.bias.detach()[outputs].clone(), requires_grad=layer.bias.requires_grad
        )
    layer.nx, layer.nf = w.shape


class GPT2AttentionUnits:
    """The heads of a ``GPT2Attention`` (see the module doc)."""

    def __init__(self, module: nn.Module) -> None:
        self.m = module

    def structured_units(self) -> list[Units]:
        m = self.m
        if getattr(m, "is_cross_attention", False):
            return []
        inner, d = m.split_size, m.head_dim
        parts = [UnitPart("c_attn.weight", 1, j * inner, d) for j in range(3)]
        parts += [UnitPart("c_attn.bias", 0, j * inner, d) for j in range(3)]
        return [Units("head", m.num_heads, (*parts, UnitPart("c_proj.weight", 0, 0, d)))]

    @torch.no_grad()
    def dead_units(self, kind: str) -> torch.Tensor:
        """Heads whose output is a constant: zero ``c_proj`` rows, or zero value columns (the softmax weights
        sum to one, so the head then outputs its value bias, which folds into ``c_proj.bias``)."""
        m = self.m
        inner = m.split_size
        v_cols = m.c_attn.weight[:, 2 * inner :].t().reshape(m.num_heads, -1)
        rows = m.c_proj.weight.reshape(m.num_heads, -1)
        return (v_cols == 0).all(1) | (rows == 0).all(1)

    @torch.no_grad()
    def remove_units(self, kind: str, keep: torch.Tensor) -> None:
        m = self.m
        if (~keep & ~self.dead_units(kind)).any():
            raise ValueError("only heads whose output is constant can be removed")
        inner = m.split_size
        keep_cols = keep.repeat_interleave(m.head_dim)
        v_bias = m.c_attn.bias[2 * inner :]
        m.c_proj.bias += v_bias[~keep_cols] @ m.c_proj.weight[~keep_cols]
        _keep_conv1d(m.c_attn, outputs=keep_cols.repeat(3))
        _keep_conv1d(m.c_proj, inputs=keep_cols)
        m.num_heads = int(keep.sum())
        m.split_size = m.num_heads * m.head_dim


class GPT2MLPUnits:
    """The hidden neurons of a ``GPT2MLP`` (see the module doc)."""

    def __init__(self, module: nn.Module) -> None:
        self.m = module

    def structured_units(self) -> list[Units]:
        parts = (
            UnitPart("c_fc.weight", 1, 0, 1),
            UnitPart("c_fc.bias", 0, 0, 1),
            UnitPart("c_proj.weight", 0, 0, 1),
        )
        return [Units("neuron", self.m.c_fc.nf, parts)]

    @torch.no_grad()
    def dead_units(self, kind: str) -> torch.Tensor:
        """Neurons whose contribution is a constant: a zero ``c_proj`` row, or a zero ``c_fc`` column (the
        neuron then outputs act(its bias), which folds into ``c_proj.bias``)."""
        return (self.m.c_fc.weight == 0).all(0) | (self.m.c_proj.weight == 0).all(1)

    @torch.no_grad()
    def remove_units(self, kind: str, keep: torch.Tensor) -> None:
        m = self.m
        if (~keep & ~self.dead_units(kind)).any():
            raise ValueError("only neurons whose output is constant can be removed")
        m.c_proj.bias += m.act(m.c_fc.bias[~keep]) @ m.c_proj.weight[~keep]
        _keep_conv1d(m.c_fc, outputs=keep)
        _keep_conv1d(m.c_proj, inputs=keep)


#: Modules of optional packages whose units haloprune knows: ``(module, class name)`` -> adapter class.
FOREIGN_UNITS: dict[tuple[str, str], type] = {
    ("transformers.models.gpt2.modeling_gpt2", "GPT2Attention"): GPT2AttentionUnits,
    ("transformers.models.gpt2.modeling_gpt2", "GPT2MLP"): GPT2MLPUnits,
}
