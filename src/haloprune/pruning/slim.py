"""Physically smaller dense models: remove dead neurons and filters, and everything that only fed them.

A pruned model keeps its full shapes: its masked weights are zeros that still cost memory and time.
:func:`slim` builds a new, *dense* module without them. It traces the model with ``torch.fx``, runs
``example_input`` through it for shapes, and then, on the channel dimension (dim 1) of every tensor:

1. **Constants, forward.** Which channels are provably constant and what constant: an output unit of a
   ``Linear``/``Conv`` whose weights on the live inputs are all zero outputs its bias (plus the folded
   constants of its inputs); ReLU, BatchNorm (eval), pooling, dropout, ``+`` and flattening map constants to
   constants. Everything else is *live*.
2. **Needs, backward.** Which channels some consumer really reads: a ``Linear``/``Conv`` needs input
   channel ``c`` if its column ``c`` is nonzero and ``c`` is live — a constant input is folded in instead:
   into the layer's bias, or, for a zero-padded ``Conv`` (where the constant's contribution is smaller near
   the border), into a fixed map added to the layer's output (:class:`AddConstant`; the slimmed model then
   works at the example input's spatial size only). A flatten between conv and linear needs channel ``c``
   if any of its ``c × spatial`` features is needed; the model's outputs and any operation slim does not
   know need every channel.
3. **Coupling.** Tensors joined by elementwise operations (BatchNorm, ReLU, pooling, residual ``+``) share
   one set of kept channels: a channel feeding an add is kept if any tensor of the add needs it, so the
   shapes always agree.
4. **Rewrite.** Every ``Linear``/``Conv`` keeps the rows of its output's kept channels and the columns of
   its input's, with the constants of the dropped inputs folded in (a dead ReLU neuron with bias ``b`` adds
   ``W[:, c] · relu(b)`` to the next layer's bias); BatchNorm keeps its channels' parameters and running
   statistics; a flatten feeding a layer that reads only some features (dead input pixels of
   LeNet-300-100, for example) is followed by a fixed ``index_select`` (:class:`SelectFeatures`).

Before the trace, modules that declare removable units (:class:`~haloprune.core.layers.Units`: the ViT's
attention heads and MLP neurons, whose tensors carry channels on the last dimension) drop the units whose
output is constant, folded into the next bias (:func:`remove_dead_units`).

The result computes the same function as the (masked) model in eval mode, up to float round-off, with
plain dense layers (no masks): it is what you export or deploy. Supported without pinning: ``nn.Linear``,
``nn.Conv{1,2,3}d`` (``groups=1``), ``nn.BatchNorm{1,2,3}d``, ReLU, max/avg/adaptive pooling, dropout,
identity, ``+``, ``flatten``/``view(n, -1)``; anything else is traced through untouched and keeps all its
channels (correct, just not slimmed there).
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from haloprune.core.errors import HaloPruneError
from haloprune.core.layers import BATCHNORM, CONV, units_of
from haloprune.core.params import unwrap
from haloprune.core.sharded import refuse_sharded
from haloprune.pruning.masks import apply_masks_, remove_masks

_SAME_MODULES = (
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
)
_SAME_FUNCTIONS: set[Callable[..., Any]] = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
_RELU_FUNCTIONS: set[Callable[..., Any]] = {F.relu, torch.relu}
_ADD_FUNCTIONS: set[Callable[..., Any]] = {operator.add, operator.iadd, torch.add}


class AddConstant(nn.Module):
    """``x + value``: the folded contribution of removed constant channels to a zero-padded conv, which
    differs near the border and so is not a per-channel bias (fixes the spatial size it works at)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != self.value.shape[-2:]:
            raise ValueError(
                f"this slimmed model folded constant channels into {tuple(self.value.shape[-2:])} feature "
                f"maps, got {tuple(x.shape[-2:])}: it runs only at the image size "
                "of the example it was slimmed with (slim again with an example of the new size)"
            )
        return x + self.value

    def extra_repr(self) -> str:
        return f"shape={tuple(self.value.shape)}"


class SelectFeatures(nn.Module):
    """``x.index_select(1, index)``: keeps the features of a flattened tensor that the next layer reads."""

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.to(torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"features={self.index.numel()}"


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    args = [*node.args, *node.kwargs.values()]
    flat: list[Any] = []
    for a in args:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    return [a for a in flat if isinstance(a, fx.Node) and _shape(a) is not None]


class _Analysis:
    """Constants (forward), needs (backward) and kept channels of every tensor in a traced model."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes = list(gm.graph.nodes)
        calls: dict[str, int] = {}
        for n in self.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        self.shared = {t for t, k in calls.items() if k > 1}  # a module called twice is left alone
        self.kind: dict[fx.Node, str] = {n: self._classify(n) for n in self.nodes}
        self.parent: dict[fx.Node, fx.Node] = {}
        self.value: dict[fx.Node, torch.Tensor] = {}
        self.need: dict[fx.Node, torch.Tensor] = {}  # per group root
        self.pinned: set[fx.Node] = set()  # group roots that keep every channel

    # ------------------------------------------------------------------ structure
    def _channels(self, node: fx.Node) -> int | None:
        shape = _shape(node)
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def _classify(self, n: fx.Node) -> str:
        """linear | conv | bn | same | relu | add | flatten | size | output | source | other."""
        if n.op == "output":
            return "output"
        if n.op == "placeholder":
            return "source"
        if self._channels(n) is None:
            if n.op == "call_method" and n.target == "size" and n.args[1:] in ((0,), ()) and not n.kwargs:
                return "size" if n.args[1:] == (0,) else "other"
            return "other"
        ins = _tensor_args(n)
        if n.op == "call_module" and n.target not in self.shared:
            m = self.modules[n.target]
            if isinstance(m, nn.Linear) and len(_shape(ins[0]) or ()) == 2:
                return "linear"
            if isinstance(m, CONV) and m.groups == 1 and m.padding_mode == "zeros":
                return "conv"
            if isinstance(m, BATCHNORM) and m.track_running_stats and m.running_mean is not None:
                return "bn"
            if isinstance(m, nn.ReLU):
                return "relu"
            if isinstance(m, _SAME_MODULES):
                return "same"
            if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)) and _no_padding(m.padding):
                return "same"
            if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
                return "flatten"
            return "other"
        if n.op == "call_function":
            if n.target in _RELU_FUNCTIONS and len(ins) == 1:
                return "relu"
            if n.target in _SAME_FUNCTIONS and len(ins) == 1:
                return "same"
            if n.target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d) and len(ins) == 1:
                pad = n.kwargs.get("padding", n.args[3] if len(n.args) > 3 else 0)
                return "same" if _no_padding(pad) else "other"
            if n.target in _ADD_FUNCTIONS and self._is_plain_add(n, ins):
                return "add"
            if n.target is torch.flatten and self._is_flatten(n):
                return "flatten"
        if n.op == "call_method":
            if n.target in ("relu", "relu_") and len(ins) == 1:
                return "relu"
            if n.target in ("add", "add_", "__add__") and self._is_plain_add(n, ins):
                return "add"
            if n.target == "flatten" and self._is_flatten(n):
                return "flatten"
            if n.target in ("view", "reshape") and n.args[-1] == -1 and self._is_flatten(n, check_args=False):
                return "flatten"
        return "other"

    def _is_plain_add(self, n: fx.Node, ins: list[fx.Node]) -> bool:
        shapes = {_shape(a) for a in ins}
        others = [a for a in n.args if not isinstance(a, fx.Node)]
        return len(shapes) == 1 and not n.kwargs and all(isinstance(a, (int, float)) for a in others)

    def _is_flatten(self, n: fx.Node, check_args: bool = True) -> bool:
        src, out = _shape(n.args[0]), _shape(n)
        if src is None or out is None or len(out) != 2 or out[0] != src[0] or len(src) < 2:
            return False
        if check_args:
            start = n.kwargs.get("start_dim", n.args[1] if len(n.args) > 1 else 0)
            end = n.kwargs.get("end_dim", n.args[2] if len(n.args) > 2 else -1)
            return start == 1 and end in (-1, len(src) - 1)
        return True

    def find(self, n: fx.Node) -> fx.Node:
        while self.parent.get(n, n) is not n:
            n = self.parent[n]
        return n

    def union(self, a: fx.Node, b: fx.Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[rb] = ra

    # ------------------------------------------------------------------ passes
    def run(self) -> None:
        for n in self.nodes:
            kind = self.kind[n]
            if kind in ("bn", "relu", "same", "add"):
                for a in _tensor_args(n):
                    self.union(n, a)
        for n in self.nodes:
            if self._channels(n) is not None:
                self.need.setdefault(self.find(n), torch.zeros(self._channels(n), dtype=torch.bool))
        for n in self.nodes:
            self._forward(n)
            if self._channels(n) is not None and self.kind[n] in ("source", "other"):
                self.pinned.add(self.find(n))
        for root in self.pinned:
            self.need[root][:] = True
        changed = True
        while changed:  # needs only grow: iterate to the fixed point (consumers of a group may come earlier)
            changed = False
            for n in reversed(self.nodes):
                changed |= self._backward(n)
            for need in self.need.values():
                if not need.any():  # never a zero-width tensor: keep one (exact either way)
                    need[0] = changed = True

    def _forward(self, n: fx.Node) -> None:
        kind, c = self.kind[n], self._channels(n)
        if c is None:
            return
        live = torch.full((c,), float("nan"), dtype=torch.float64)
        ins = _tensor_args(n)
        if kind in ("linear", "conv"):
            m = self.modules[n.target]
            v = self.value[ins[0]]
            w = m.weight.detach().double()
            w2 = w.reshape(w.shape[0], w.shape[1], -1)
            nonzero = (w2 != 0).any(2)
            in_live = torch.isnan(v)
            out_live = (nonzero & in_live).any(1)
            v0 = torch.where(in_live, torch.zeros_like(v), v)
            if kind == "conv" and not _no_padding(m.padding):
                out_live |= (nonzero & (v0 != 0)).any(1)  # a padded conv of a constant is not constant
            const = w2.sum(2) @ v0
            if m.bias is not None:
                const = const + m.bias.detach().double()
            self.value[n] = torch.where(out_live, live, const)
        elif kind == "bn":
            m = self.modules[n.target]
            v = self.value[ins[0]]
            out = (v - m.running_mean.double()) / torch.sqrt(m.running_var.double() + m.eps)
            if m.affine:
                out = out * m.weight.detach().double() + m.bias.detach().double()
            self.value[n] = out
        elif kind == "relu":
            self.value[n] = torch.relu(self.value[ins[0]])
        elif kind == "same":
            self.value[n] = self.value[ins[0]].clone()
        elif kind == "add":
            total = sum(self.value[a] for a in ins)
            scalars = sum(float(a) for a in n.args if isinstance(a, (int, float)))
            self.value[n] = total + scalars
        elif kind == "flatten":
            src = _shape(ins[0])
            spatial = 1
            for d in src[2:]:
                spatial *= d
            self.value[n] = self.value[ins[0]].repeat_interleave(spatial)
        else:
            self.value[n] = live

    def _require(self, node: fx.Node, mask: torch.Tensor) -> bool:
        need = self.need[self.find(node)]
        new = need | mask
        if torch.equal(new, need):
            return False
        need.copy_(new)
        return True

    def _backward(self, n: fx.Node) -> bool:
        kind = self.kind[n]
        ins = _tensor_args(n)
        if kind in ("linear", "conv"):
            m = self.modules[n.target]
            v = self.value[ins[0]]
            w = m.weight.detach()
            col = (w.reshape(w.shape[0], w.shape[1], -1) != 0).any(2).any(0)
            return self._require(ins[0], col & torch.isnan(v))
        if kind == "flatten":
            c = self._channels(ins[0])
            out_need = self.need[self.find(n)]
            return self._require(ins[0], out_need.view(c, -1).any(1))
        if kind in ("bn", "relu", "same", "add", "size", "source"):
            return False
        changed = False  # output and unknown operations read every channel of their inputs
        for a in ins:
            if self._channels(a) is not None:
                changed |= self._require(a, torch.ones(self._channels(a), dtype=torch.bool))
        return changed

    def kept(self, node: fx.Node) -> torch.Tensor:
        """Indices of the channels of ``node`` that stay."""
        return torch.nonzero(self.need[self.find(node)]).flatten()


def _no_padding(padding: Any) -> bool:
    if isinstance(padding, str):
        return padding == "valid"
    return all(p == 0 for p in (padding if isinstance(padding, (tuple, list)) else (padding,)))


@torch.no_grad()
def _slim_layer(
    m: nn.Module, kind: str, out_idx: torch.Tensor, in_idx: torch.Tensor, v_in: torch.Tensor, in_shape
) -> tuple[nn.Module, torch.Tensor | None]:
    """The layer without its dropped rows and columns, and (for a zero-padded conv that had constant
    inputs removed) the map to add to its output; constants of dropped inputs are folded in."""
    w = m.weight.detach()
    dropped = torch.ones(w.shape[1], dtype=torch.bool)
    dropped[in_idx] = False
    v = torch.where(torch.isnan(v_in) | ~dropped, torch.zeros_like(v_in), v_in)  # constants folded
    bias = m.bias.detach().double() if m.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    add_map = None
    if kind == "conv" and not _no_padding(m.padding) and bool((v != 0).any()):
        # the constant's contribution is smaller where the kernel overlaps the zero padding
        x = v.view(1, -1, *([1] * (len(in_shape) - 2))).expand(1, -1, *in_shape[2:])
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(in_shape) - 2]
        add_map = conv(x, w.double(), None, m.stride, m.padding, m.dilation)[0, out_idx].to(w.dtype)
    else:
        bias = bias + w.double().reshape(w.shape[0], w.shape[1], -1).sum(2) @ v
    bias = bias[out_idx]
    has_bias = m.bias is not None or bool((bias != 0).any())
    weight = w[out_idx][:, in_idx]
    if kind == "linear":
        new: nn.Module = nn.Linear(len(in_idx), len(out_idx), bias=has_bias)
    else:
        new = type(m)(
            len(in_idx),
            len(out_idx),
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            dilation=m.dilation,
            bias=has_bias,
        )
    new = new.to(device=w.device, dtype=w.dtype)
    new.weight.copy_(weight)
    if has_bias:
        new.bias.copy_(bias.to(w.dtype))
    return new, add_map


@torch.no_grad()
def _slim_bn(m: nn.Module, idx: torch.Tensor) -> nn.Module:
    new = type(m)(len(idx), eps=m.eps, momentum=m.momentum, affine=m.affine, track_running_stats=True)
    new = new.to(device=m.running_mean.device, dtype=m.running_mean.dtype)
    new.running_mean.copy_(m.running_mean[idx])
    new.running_var.copy_(m.running_var[idx])
    new.num_batches_tracked.copy_(m.num_batches_tracked)
    if m.affine:
        new.weight.copy_(m.weight[idx])
        new.bias.copy_(m.bias[idx])
    return new


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, attr = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, attr, module)


def _insert_after(gm: fx.GraphModule, node: fx.Node, name: str, module: nn.Module) -> None:
    """Route every user of ``node`` through ``module(node)``."""
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)


def remove_dead_units(model: nn.Module) -> int:
    """In place: every module that declares its units (``structured_units``, e.g. the ViT's attention heads
    and MLP neurons; see :class:`~haloprune.core.layers.Units`) loses those whose output is constant
    (``dead_units``), folded into what follows (``remove_units``); at least one unit of each kind stays.
    Returns how many units were removed."""
    removed = 0
    for module in list(model.modules()):
        source = units_of(module)
        if source is None:
            continue
        for units in source.structured_units():
            dead = source.dead_units(units.kind)
            keep = ~dead
            if not keep.any():
                keep[0] = True
            if not keep.all():
                source.remove_units(units.kind, keep)
                removed += int((~keep).sum())
    return removed


def slim(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A smaller dense copy of ``model`` (eval mode) without its dead neurons/filters; see the module doc.

    A model ``torch.fx`` cannot trace (a Hugging Face GPT-2) but whose modules declare units (its heads
    and MLP neurons, :mod:`haloprune.core.hf_units`) is slimmed by removing the dead units alone, with a
    warning saying so; any other untraceable model is a :class:`HaloPruneError`.

    ``example_input`` (any batch size) fixes the shapes. The model must be traceable by
    ``torch.fx.symbolic_trace``. ``model`` itself is not changed; its masks, if any, are applied to the
    copy (pruned weights count as zero). Outputs agree with ``model.eval()`` up to float round-off.
    """
    refuse_sharded(unwrap(model), "slim")
    model = copy.deepcopy(unwrap(model)).eval()
    apply_masks_(model)
    remove_masks(model)  # the copy is dense
    remove_dead_units(model)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:
        if any(units_of(m) is not None for m in model.modules()):
            warnings.warn(
                f"slim: torch.fx cannot trace {type(model).__name__}, so only its declared units (attention "
                "heads, MLP neurons) were removed; its other layers keep their shapes",
                stacklevel=2,
            )
            return model
        raise HaloPruneError(
            f"slim needs a model torch.fx can trace; {type(model).__name__}: {str(err).splitlines()[0]}"
        ) from None
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    plan = _Analysis(gm)
    plan.run()
    first_input = {n: ins[0] for n in plan.nodes if (ins := _tensor_args(n))}  # before the graph changes
    for n in plan.nodes:
        kind = plan.kind[n]
        if kind in ("linear", "conv"):
            src = first_input[n]
            m = plan.modules[n.target]
            layer, add_map = _slim_layer(m, kind, plan.kept(n), plan.kept(src), plan.value[src], _shape(src))
            _set_module(gm, n.target, layer)
            if add_map is not None:
                _insert_after(gm, n, f"slim_constant_{n.name}", AddConstant(add_map))
        elif kind == "bn":
            _set_module(gm, n.target, _slim_bn(plan.modules[n.target], plan.kept(n)))
        elif kind == "flatten":
            src = first_input[n]
            spatial = plan.need[plan.find(n)].numel() // plan.need[plan.find(src)].numel()
            produced = (plan.kept(src)[:, None] * spatial + torch.arange(spatial)).flatten()
            wanted = plan.kept(n)
            if not torch.equal(produced, wanted):
                position = torch.full((plan.need[plan.find(n)].numel(),), -1, dtype=torch.int64)
                position[produced] = torch.arange(len(produced))
                index = position[wanted]
                assert (index >= 0).all(), "slim: a flatten needs a channel that was not kept"
                _insert_after(gm, n, f"slim_select_{n.name}", SelectFeatures(index.to(example_input.device)))
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm.eval()
