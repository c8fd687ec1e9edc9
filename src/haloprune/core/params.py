"""Which parameters a penalty or a pruning method acts on, always named by dotted parameter name.

The default is the weights of every layer :func:`haloprune.core.layers.layer_kind` knows:
``nn.Linear``, ``nn.Conv{1,2,3}d``, ``nn.ConvTranspose{1,2,3}d``, ``nn.MultiheadAttention`` (its input
projection, ``in_proj_weight`` or ``q/k/v_proj_weight``; its ``out_proj`` is a Linear) and Hugging Face
``transformers``' ``Conv1D`` (GPT-2's attention and MLP layers). Biases can be added (the HALO reference
penalises conv biases on CIFAR), and the scope can be narrowed to conv or linear layers only (the
reference prunes only convolutions on CIFAR; attention and Conv1D count as linear).

**Embeddings and language-model heads stay dense by default**, as in the LLM pruning tools: an
``nn.Embedding``'s table is never a default parameter, nor is a layer's weight tied to one (GPT-2's
``lm_head``, which *is* its token embedding), nor the output embeddings of a model that names them
(``model.get_output_embeddings()``: the LM head of a ``transformers`` model, tied or not). A classifier
head (a LeNet's last layer, a ViT's ``head``) is an ordinary layer and is pruned. Any parameter is added by
name with ``include=["lm_head.weight"]`` and any default one left out with ``exclude=["head.*"]``
(shell-style globs on dotted names; a pattern that matches no parameter is an error, not a silent no-op).

A parameter shared by several modules (a GPT's embedding tied to its output head) is selected once,
under its first name in ``model.named_parameters()``; patterns match any of its names. Names, not
module objects, are the keys: they survive ``copy.deepcopy``, pickling and ``state_dict`` round-trips.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Literal, TypedDict, Unpack

from torch import nn

from haloprune.core.errors import SelectionError
from haloprune.core.layers import layer_kind

Scope = Literal["all", "conv", "linear"]

# The weights (and biases) of each default layer type, by attribute name.
_WEIGHTS = ("weight", "in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_BIASES = ("bias", "in_proj_bias")


class SelectionArgs(TypedDict, total=False):
    """The keyword arguments that say which parameters are penalised or pruned (see the module doc)."""

    scope: Scope
    include_bias: bool
    include: Sequence[str] | None
    exclude: Sequence[str] | None


SELECTION_KEYS = frozenset(SelectionArgs.__annotations__)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module behind ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _output_embeddings(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model.get_output_embeddings()`` (a ``transformers`` model's LM head), if any."""
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        return []
    try:
        head = get()
    except (AttributeError, NotImplementedError, TypeError):
        return []
    return list(head.parameters()) if isinstance(head, nn.Module) else []


def _patterns(value: Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        raise TypeError(f"{what} takes a list of patterns, e.g. {what}=[{value!r}], not a string")
    out = list(value)
    for p in out:
        if not isinstance(p, str) or not p:
            raise TypeError(f"{what} patterns must be non-empty strings, got {p!r}")
    return out


def select_parameters(
    model: nn.Module,
    scope: Scope = "all",
    include_bias: bool = False,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[str]:
    """Dotted names of the parameters in scope, in ``named_parameters()`` order, each parameter once.

    >>> select_parameters(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    ['0.weight', '2.weight']
    """
    if scope not in ("all", "conv", "linear"):
        raise ValueError(f"scope must be 'all', 'conv' or 'linear', got {scope!r}")
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    model = unwrap(model)
    kinds = ("linear", "conv") if scope == "all" else (scope,)
    attrs = _WEIGHTS + (_BIASES if include_bias else ())
    default: set[int] = set()
    dense: set[int] = set()  # embeddings, and layers tied to them or named the output embeddings
    aliases: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        kind = layer_kind(module)
        for attr, param in module.named_parameters(recurse=False):
            aliases.setdefault(id(param), []).append(prefix + attr)
            if kind in kinds and attr in attrs:
                default.add(id(param))
            if isinstance(module, nn.Embedding):
                dense.add(id(param))
    dense |= {id(p) for p in _output_embeddings(model)}
    default -= dense
    canonical = list(model.named_parameters())  # first name of each parameter, in module order

    def matching(patterns: list[str], what: str) -> set[int]:
        hit: set[int] = set()
        for pat in patterns:
            found = {id(p) for _, p in canonical if any(fnmatch.fnmatchcase(a, pat) for a in aliases[id(p)])}
            if not found:
                names = ", ".join(n for n, _ in canonical[:8]) + (", ..." if len(canonical) > 8 else "")
                raise SelectionError(
                    f"{what} pattern {pat!r} matches no parameter of the model (it has {names})"
                )
            hit |= found
        return hit

    chosen = (default | matching(inc, "include")) - matching(exc, "exclude")
    return [n for n, p in canonical if id(p) in chosen]


def require_parameters(model: nn.Module, what: str, **selection: Unpack[SelectionArgs]) -> list[str]:
    """:func:`select_parameters`, refusing with a one-line :class:`SelectionError` when it selects
    nothing (``what`` says for what: "penalise", "prune"): a model whose layers the default does not
    know is never silently left dense."""
    names = select_parameters(unwrap(model), **selection)
    if not names:
        given = ", ".join(f"{k}={v!r}" for k, v in selection.items() if v)
        layers = sorted({type(m).__name__ for m in unwrap(model).modules() if m._parameters})[:6]
        raise SelectionError(
            f"{type(unwrap(model)).__name__} has no parameters to {what} in "
            + (f"this selection ({given})" if given else "the default selection")
            + f" (layers with parameters: {', '.join(layers) or 'none'}); name them with include=[...]"
        )
    return names
