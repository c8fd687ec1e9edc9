"""The one FLOPs counter: weights and multiply-accumulates per input of a model's Linear/Conv layers
(ConvTranspose and ``transformers``' Conv1D included)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from haloprune.core.layers import CONV_TRANSPOSE, is_dense_layer, output_units
from haloprune.core.params import unwrap


@dataclass(frozen=True)
class Cost:
    """Size and compute of a model: ``params`` weights of its Linear/Conv layers, ``macs``
    multiply-accumulates of those layers per forward of one input (biases, BatchNorm, activations and
    pooling are not counted: they are a rounding error next to the layers)."""

    params: int
    macs: int


@torch.no_grad()
def count_cost(model: nn.Module, example_input: torch.Tensor, *, nonzero_only: bool = True) -> Cost:
    """Weights and multiply-accumulates per input of every ``Linear``/``Conv`` layer of ``model``.

    ``nonzero_only=True`` counts only surviving (nonzero) weights: the work of an ideal sparse kernel,
    and for a masked model the number of surviving weights. ``nonzero_only=False`` counts every weight:
    what dense kernels really do (use it for a slimmed model). A layer's MACs are its counted weights
    times the number of positions it is applied at (1 for a ``Linear`` on ``(N, F)``, the output's
    spatial size for a ``Conv``, the tokens for a layer on ``(N, T, F)``; the *input*'s spatial size for a
    ``ConvTranspose``, which applies every weight once per input position), measured by running
    ``example_input`` (batch ``N``) through the model.
    """
    model = unwrap(model)
    batch = example_input.shape[0]
    params, macs = 0, 0
    seen: set[int] = set()
    handles = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal params, macs
        w = module.weight
        counted = int(torch.count_nonzero(w)) if nonzero_only else w.numel()
        if isinstance(module, CONV_TRANSPOSE):
            positions = inputs[0].numel() // (batch * w.shape[0])
        else:
            positions = out.numel() // (batch * output_units(module))
        macs += counted * positions
        if id(w) not in seen:  # a weight shared by several layers is counted once
            seen.add(id(w))
            params += counted

    for m in model.modules():
        if is_dense_layer(m):
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return Cost(params, macs)
