"""The one place that knows how a pruning mask is stored, and what keeps pruned weights at zero.

A mask is a boolean buffer named ``<param>_mask`` on the module that owns the parameter (``fc1.weight``
→ buffer ``fc1.weight_mask``), and the pruned entries of the parameter itself are zero. No forward hooks
and no parametrizations, so a masked model keeps its masks through ``copy.deepcopy``, ``pickle`` /
``torch.save(model)`` and ``.to(device)``, runs at dense speed and compiles with ``torch.compile`` like the
plain model.

**A pruned model's checkpoint is a plain one.** The mask buffers are *not persistent*: ``state_dict()``
holds exactly the keys of the unpruned model, with zeros where weights were pruned, so it loads with plain
``model.load_state_dict(sd)`` (strict) into a fresh model that never saw haloprune, and Hugging Face's
``save_pretrained`` / ``from_pretrained`` round-trips it without an "unused weights" warning. The masks
come back wherever haloprune is in the loop: :func:`load_state_dict` re-attaches them (exactly, from the
``<param>_mask`` entries of :func:`masked_state_dict`, haloprune's own checkpoints; else from the zeros),
and :func:`restore_masks` re-attaches them to any loaded model from the exact zeros of its prunable
weights. :func:`remove_masks` makes pruning permanent (the zeros stay, nothing holds them there).

**Pruned weights stay pruned, with no call from you.** Importing haloprune installs one global
optimizer step post-hook (:func:`torch.optim.optimizer.register_optimizer_step_post_hook`): after every
``step()`` of *any* ``torch.optim`` optimizer, each masked parameter it holds is multiplied by its mask,
so momentum and Adam moments from before the pruning, weight decay, a new optimizer, HALO's fused step —
none of them can revive a pruned weight. A masked parameter carries a small link to its owning module
(``param._haloprune_mask``), kept across ``copy.deepcopy``, pickling and ``.to(device)``; the hook reads
the mask buffer through it, so the mask in ``state_dict`` is always the one enforced. The hook costs
nothing for optimizers without masked parameters (the "masked" column of ``benchmarks/penalty_overhead.py``
measures the cost with them).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, Unpack

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from haloprune.core.params import SelectionArgs, select_parameters, unwrap
from haloprune.core.sharded import count_nonzero, local, shard_like

SUFFIX = "_mask"
_LINK = "_haloprune_mask"  # parameter attribute: (MaskOwner, attribute name)
_OWNER = "_haloprune_mask_owner"  # module attribute: its MaskOwner
_generation = 0  # bumped whenever a mask is attached or removed (invalidates the hook's per-optimizer cache)


class MaskOwner:
    """Ties a module's masked parameters to their mask buffers, across deepcopy and pickling.

    ``nn.Parameter.__deepcopy__`` drops a parameter's Python attributes, so the link of each masked
    parameter is re-made by the module's owner object when the module is deep-copied (the module's
    parameters and buffers are copied before its other attributes, so the copies are in ``memo``).
    Pickling keeps parameter attributes; the owner pickles as a reference to its module.
    """

    def __init__(self, module: nn.Module) -> None:
        global _generation
        self._module = weakref.ref(module)
        _generation += 1  # new masked parameters (also when unpickled or deep-copied)

    @property
    def module(self) -> nn.Module | None:
        return self._module()

    def mask(self, attr: str) -> torch.Tensor | None:
        module = self._module()
        return None if module is None else module._buffers.get(attr + SUFFIX)

    def __deepcopy__(self, memo: dict[int, Any]) -> MaskOwner:
        old = self._module()
        new_module = memo.get(id(old)) if old is not None else None
        if new_module is None:  # only the owner is being copied: it cannot stand for any module
            return self
        new = MaskOwner(new_module)
        for attr, param in old._parameters.items():
            copy = memo.get(id(param))
            if param is not None and copy is not None and getattr(param, _LINK, None) is not None:
                setattr(copy, _LINK, (new, attr))
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        return (MaskOwner, (self._module(),))


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def _link(module: nn.Module, attr: str) -> None:
    owner = module.__dict__.get(_OWNER)
    if not isinstance(owner, MaskOwner) or owner.module is not module:
        owner = MaskOwner(module)
        module.__dict__[_OWNER] = owner
    setattr(module._parameters[attr], _LINK, (owner, attr))


@torch.no_grad()
def attach_mask(model: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Set (or replace, in place) the mask of parameter ``name`` and zero its pruned entries."""
    global _generation
    model = unwrap(model)
    module, attr = _owner(model, name)
    param = getattr(module, attr)
    if mask.shape != param.shape:
        raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, parameter {tuple(param.shape)}")
    mask = shard_like(mask.to(dtype=torch.bool), param)  # a whole mask for a sharded weight: its block
    mask = mask.to(device=param.device)
    existing = module._buffers.get(attr + SUFFIX)
    if isinstance(existing, torch.Tensor) and existing.shape == mask.shape:
        existing.copy_(mask)
    else:  # not persistent: state_dict() stays the plain model's (see the module doc)
        module.register_buffer(attr + SUFFIX, mask.clone(), persistent=False)
    param.mul_(mask)
    _link(module, attr)
    _generation += 1


def attach_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """:func:`attach_mask` for every ``{parameter name: mask}`` of ``masks``."""
    for name, mask in masks.items():
        attach_mask(model, name, mask)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` for every masked parameter."""
    model = unwrap(model)
    masks = {}
    for name, _ in model.named_parameters():
        module, attr = _owner(model, name)
        mask = module._buffers.get(attr + SUFFIX)
        if isinstance(mask, torch.Tensor):
            masks[name] = mask
    return masks


def without_masks(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a ``state_dict``) without its mask buffers (the keys ``<param>_mask``)."""
    return {k: v for k, v in state.items() if not k.endswith(SUFFIX)}


@torch.no_grad()
def apply_masks_(model: nn.Module) -> None:
    """Zero the pruned entries of every masked parameter (the optimizer hook does this after each step)."""
    model = unwrap(model)
    for name, mask in get_masks(model).items():
        model.get_parameter(name).mul_(mask)


def remove_masks(model: nn.Module) -> None:
    """Make pruning permanent: drop the masks (the pruned weights stay zero, but nothing holds them there
    any more: training lets them grow back). The model is then a plain model in every respect."""
    global _generation
    model = unwrap(model)
    for name in list(get_masks(model)):
        module, attr = _owner(model, name)
        delattr(module, attr + SUFFIX)
        param = module._parameters[attr]
        if param is not None and _LINK in param.__dict__:
            delattr(param, _LINK)
    _generation += 1


def mask_key(name: str) -> str:
    """The key of parameter ``name``'s mask in haloprune's checkpoints (``<param>_mask``)."""
    return name + SUFFIX


def mask_entries(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask under its checkpoint key (:func:`mask_key`); :func:`masks_of` reads them back."""
    return {mask_key(name): mask for name, mask in get_masks(model).items()}


def masks_of(entries: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{parameter name: mask}`` from checkpoint entries (the keys :func:`mask_key` gives)."""
    return {k[: -len(SUFFIX)]: v for k, v in entries.items() if k.endswith(SUFFIX)}


def masked_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` plus each mask as ``<param>_mask``: haloprune's own checkpoints, which
    :func:`load_state_dict` restores exactly (a mask can cover weights that are not zero, e.g. a
    group-pruned unit's bias, and a weight can be zero without being pruned)."""
    return {**unwrap(model).state_dict(), **mask_entries(model)}


def load_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    *,
    restore: bool = True,
    **selection: Unpack[SelectionArgs],
) -> Any:
    """Load a (possibly pruned) ``state_dict`` into ``model`` and re-attach its masks.

    A state dict with ``<param>_mask`` entries (:func:`masked_state_dict`, and the state dicts of earlier
    haloprune versions) gets exactly those masks. A plain one (``model.state_dict()`` of a pruned model, a
    ``from_pretrained`` folder's weights) gets its masks from the zeros of its prunable weights
    (:func:`restore_masks` with ``**selection``), unless ``restore=False``. Returns what
    ``nn.Module.load_state_dict`` returns.
    """
    model = unwrap(model)
    params = dict(model.named_parameters())
    masks = {name: mask for name, mask in masks_of(state_dict).items() if name in params}
    taken = {mask_key(name) for name in masks}
    plain = {k: v for k, v in state_dict.items() if k not in taken}
    result = model.load_state_dict(plain, strict=strict)
    attach_masks(model, masks)
    if not masks and restore:
        restore_masks(model, **selection)
    apply_masks_(model)
    return result


@torch.no_grad()
def restore_masks(model: nn.Module, **selection: Unpack[SelectionArgs]) -> dict[str, torch.Tensor]:
    """Re-attach masks to a loaded pruned model from the exact zeros of its prunable weights.

    Every parameter of the selection (the same keywords as pruning: ``scope``, ``include_bias``,
    ``include``, ``exclude``; see :mod:`haloprune.core.params`) that has zeros gets the mask ``w != 0``
    (replacing any it had); one without zeros is left unmasked. From then on the zeros are held through
    training by any optimizer, as after pruning. Returns the masks attached."""
    model = unwrap(model)
    out = {}
    for name in select_parameters(model, **selection):
        param = model.get_parameter(name)
        keep = param != 0
        if count_nonzero(keep, name) < param.numel():  # (over all processes for a sharded weight)
            attach_mask(model, name, keep)
            out[name] = keep
    return out


# ------------------------------------------------------------------------------ the optimizer hook

_Masked = list[tuple[torch.Tensor, Any, str]]  # (param, owner, attr) of each masked parameter
_Factors = dict[int, tuple[Any, int, torch.Tensor]]  # per parameter id: (mask, its version, factor)
_plans: weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple[Any, _Masked, _Factors]]
_plans = weakref.WeakKeyDictionary()
_FACTOR_BUDGET = 1 << 24  # mask elements per optimizer also kept as factors (64 MiB in float32)


def _masked_params(optimizer: torch.optim.Optimizer) -> tuple[_Masked, _Factors]:
    """``(param, owner, attr)`` for the masked parameters ``optimizer`` holds, and the factors kept for
    them (both cached until a mask or the optimizer's parameter list changes; the factors then start
    empty)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    key = (_generation, len(params), id(optimizer.param_groups[0]["params"]) if params else 0)
    cached = _plans.get(optimizer)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    out = []
    for p in params:
        link = p.__dict__.get(_LINK)
        if link is not None:
            out.append((p, link[0], link[1]))
    factors: _Factors = {}
    _plans[optimizer] = (key, out, factors)
    return out, factors


def _enforce_masks(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Multiply every masked parameter ``optimizer`` holds by its mask, in one ``foreach`` call over the
    local blocks (a sharded parameter's mask is sharded alike).

    The factor is the mask in the parameter's dtype, kept from step to step (remade when the mask
    changes, in place or replaced): a CPU multiplies two float tensors 2.5x faster than a float by a
    bool. Where an optimizer's masks hold more than 2^24 elements, the masks beyond that are read as
    ``uint8`` instead (a view, no copy: no memory for a large model; the same result to the bit)."""
    if _generation == 0:  # no mask was ever attached in this process
        return
    masked, cache = _masked_params(optimizer)
    room = _FACTOR_BUDGET
    params, factors = [], []
    for p, owner, attr in masked:
        mask = owner.mask(attr)
        if mask is None or mask.shape != p.shape:
            continue
        block = local(p)
        hit = cache.get(id(p))
        if hit is not None and hit[0] is mask and hit[1] == mask._version and hit[2].dtype == block.dtype:
            factor = hit[2]
        else:
            keep = local(mask)
            keep = keep if keep.dtype == torch.bool else keep != 0  # (a mask is bool unless set by hand)
            keep = keep if keep.device == block.device else keep.to(block.device)
            if keep.numel() <= room:
                factor = keep.to(block.dtype)
                cache[id(p)] = (mask, mask._version, factor)
            else:
                factor = keep.view(torch.uint8)
                cache.pop(id(p), None)
        if factor.dtype != torch.uint8:
            room -= factor.numel()
        params.append(block)
        factors.append(factor)
    if params:
        with torch.no_grad():
            torch._foreach_mul_(params, factors)


register_optimizer_step_post_hook(_enforce_masks)
