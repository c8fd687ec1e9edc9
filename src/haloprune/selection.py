"""Which parameters a penalty or a pruning method acts on, always named by dotted parameter name.

The default is the weights of every ``nn.Linear`` and ``nn.Conv{1,2,3}d`` layer. Biases can be added
(the HALO reference penalises conv biases on CIFAR), and the scope can be narrowed to conv or linear
layers only (the reference prunes only convolutions on CIFAR). Names, not module objects, are the keys:
they survive ``copy.deepcopy``, pickling and ``state_dict`` round-trips.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

Scope = Literal["all", "conv", "linear"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LINEAR = (nn.Linear,)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module behind ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def select_parameters(model: nn.Module, scope: Scope = "all", include_bias: bool = False) -> list[str]:
    """Dotted names of the parameters in scope, in module order.

    >>> select_parameters(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    ['0.weight', '2.weight']
    """
    types = {"all": _CONV + _LINEAR, "conv": _CONV, "linear": _LINEAR}[scope]
    names: list[str] = []
    for mod_name, module in unwrap(model).named_modules():
        if not isinstance(module, types):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        names.append(prefix + "weight")
        if include_bias and getattr(module, "bias", None) is not None:
            names.append(prefix + "bias")
    return names
