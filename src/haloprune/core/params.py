"""Which parameters a penalty or a pruning method acts on, always named by dotted parameter name.

The default is the weights of every ``nn.Linear``, ``nn.Conv{1,2,3}d`` and ``nn.MultiheadAttention``
(its input projection, ``in_proj_weight`` or ``q/k/v_proj_weight``; its ``out_proj`` is a Linear). Biases
can be added (the HALO reference penalises conv biases on CIFAR), and the scope can be narrowed to conv or
linear layers only (the reference prunes only convolutions on CIFAR; attention counts as linear). Any
other parameter (an ``nn.Embedding``'s table, a ViT's position embedding, ...) is added by name with
``include=["tok_emb.weight"]`` and any default one left out with ``exclude=["head.*"]`` (shell-style
globs on dotted names; a pattern that matches no parameter is an error, not a silent no-op).

A parameter shared by several modules (a GPT's embedding tied to its output head) is selected once,
under its first name in ``model.named_parameters()``; patterns match any of its names. Names, not
module objects, are the keys: they survive ``copy.deepcopy``, pickling and ``state_dict`` round-trips.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Literal, TypedDict

from torch import nn

from haloprune.core.errors import SelectionError
from haloprune.core.layers import CONV, LINEAR

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
    types = {"all": CONV + LINEAR, "conv": CONV, "linear": LINEAR}[scope]
    attrs = _WEIGHTS + (_BIASES if include_bias else ())
    default: set[int] = set()
    aliases: dict[int, list[str]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for attr, param in module.named_parameters(recurse=False):
            aliases.setdefault(id(param), []).append(prefix + attr)
            if isinstance(module, types) and attr in attrs:
                default.add(id(param))
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
