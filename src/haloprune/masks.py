"""The one place that knows how a pruning mask is stored.

A mask is a boolean buffer named ``<param>_mask`` on the module that owns the parameter (``fc1.weight``
→ buffer ``fc1.weight_mask``), and the pruned entries of the parameter itself are zero. Nothing else:
no forward hooks and no parametrizations, so a masked model

* keeps its masks in ``state_dict()``, ``copy.deepcopy``, ``pickle`` / ``torch.save(model)``;
* runs at dense speed and compiles with ``torch.compile`` like the plain model;
* keeps pruned weights at exactly zero while training continues, provided :func:`apply_masks_` runs after
  each optimizer step (the trainer does it; in your own loop call :func:`keep_masked` once).

To load a pruned ``state_dict`` into a fresh, unpruned model use :func:`load_state_dict`, which attaches
the masks first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .selection import unwrap

SUFFIX = "_mask"


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


@torch.no_grad()
def attach_mask(model: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Set (or replace, in place) the mask of parameter ``name`` and zero its pruned entries."""
    model = unwrap(model)
    module, attr = _owner(model, name)
    param = getattr(module, attr)
    if mask.shape != param.shape:
        raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, parameter {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=torch.bool)
    existing = getattr(module, attr + SUFFIX, None)
    if isinstance(existing, torch.Tensor):
        existing.copy_(mask)
    else:
        module.register_buffer(attr + SUFFIX, mask.clone())
    param.mul_(mask)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` for every masked parameter."""
    model = unwrap(model)
    masks = {}
    for name, _ in model.named_parameters():
        module, attr = _owner(model, name)
        mask = getattr(module, attr + SUFFIX, None)
        if isinstance(mask, torch.Tensor):
            masks[name] = mask
    return masks


@torch.no_grad()
def apply_masks_(model: nn.Module) -> None:
    """Zero the pruned entries of every masked parameter (call after each optimizer step)."""
    model = unwrap(model)
    for name, mask in get_masks(model).items():
        model.get_parameter(name).mul_(mask)


def remove_masks(model: nn.Module) -> None:
    """Drop the mask buffers; the pruned weights stay zero but are free to grow back if trained."""
    model = unwrap(model)
    for name in list(get_masks(model)):
        module, attr = _owner(model, name)
        delattr(module, attr + SUFFIX)


def keep_masked(optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
    """Re-apply the masks after every ``optimizer.step()``; returns the removable hook handle."""
    return optimizer.register_step_post_hook(lambda *_: apply_masks_(model))


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> Any:
    """Load a (possibly pruned) ``state_dict`` into ``model``, attaching the masks it carries first."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    for key, value in state_dict.items():
        if key.endswith(SUFFIX) and key[: -len(SUFFIX)] in params:
            attach_mask(model, key[: -len(SUFFIX)], value)
    result = model.load_state_dict(state_dict, strict=strict)
    apply_masks_(model)
    return result
