"""Pruned models on disk: the compact safetensors format (bit-exact, masks kept) and a dense
compressed-tensors checkpoint.

``save_sparse(model, path, ...)`` writes a safetensors file in which every masked weight is stored as its
nonzero values plus either a bitmask (1 bit per weight) or the flat positions of the survivors (uint16 or
int32), whichever is smaller for that tensor; everything else (biases, BatchNorm statistics) is stored
densely. The file's metadata says which model to build (registry name and arguments), the sparsity and the
haloprune version. :func:`read_sparse` gives back the state dict and the masks;
:func:`haloprune.export.load` rebuilds the model from them. Files are read with safetensors, which stores
plain tensors only: loading one cannot run code.

:func:`save_compressed_tensors` writes what other tools read: the model's own state dict with the pruned
weights as zeros, and a ``config.json`` whose ``quantization_config`` records the sparsity in
compressed-tensors' ``dense`` form (:func:`compressed_tensors_config`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from haloprune.core import __version__
from haloprune.core.errors import HaloPruneError
from haloprune.core.io import atomic_path
from haloprune.core.params import unwrap
from haloprune.core.sharded import refuse_sharded
from haloprune.pruning.masks import get_masks

FORMAT = "haloprune-sparse/1"


def _encode(weight: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    flat_mask = mask.flatten().cpu()
    values = weight.detach().flatten().cpu()[flat_mask].contiguous()
    n, kept = flat_mask.numel(), int(flat_mask.sum())
    index_bytes = kept * (2 if n <= 2**16 else 4)
    if index_bytes < (n + 7) // 8:
        pos = torch.nonzero(flat_mask).flatten()
        index = pos.to(torch.int16 if n <= 2**16 else torch.int32)  # int16 bits reinterpreted as uint16
        return {"values": values, "index": index}
    bits = np.packbits(flat_mask.numpy().astype(np.uint8))
    return {"values": values, "bitmask": torch.from_numpy(bits)}


def _decode(parts: dict[str, torch.Tensor], shape: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(np.prod(shape)) if shape else 1
    if "bitmask" in parts:
        mask = torch.from_numpy(np.unpackbits(parts["bitmask"].numpy())[:n].astype(bool))
    else:
        index = parts["index"]
        pos = index.to(torch.int64) & 0xFFFF if index.dtype == torch.int16 else index.to(torch.int64)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[pos] = True
    weight = torch.zeros(n, dtype=parts["values"].dtype)
    weight[mask] = parts["values"]
    return weight.view(shape), mask.view(shape)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as plain CPU tensors safetensors can store: a tensor whose memory an earlier one shares (a
    weight tied to another, e.g. an output head to its token embedding) copied, so it is stored under
    each of its names and loads back into the one parameter."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in state.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:
            value = value.clone()
        seen.add(storage)
        out[name] = value
    return out


def save_sparse(
    model: nn.Module, path: str | Path, *, architecture: dict[str, Any], extra: dict[str, str] | None = None
) -> Path:
    """Write ``model`` (masks attached) compactly to ``path`` (safetensors)."""
    model = unwrap(model)
    refuse_sharded(model, "save_sparse")
    masks = get_masks(model)
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, value in _unshared(model.state_dict()).items():
        if name in masks:
            for part, t in _encode(value, masks[name]).items():
                tensors[f"{name}::{part}"] = t
            shapes[name] = list(value.shape)
        else:
            tensors[name] = value
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    metadata = {
        "format": FORMAT,
        "architecture": json.dumps(architecture),
        "sparse_shapes": json.dumps(shapes),
        "sparsity": f"{1 - kept / total:.6f}" if total else "0",
        "haloprune_version": __version__,
        **(extra or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as err:
        raise HaloPruneError(f"{path} is not a haloprune export ({str(err).splitlines()[0][:120]})") from None


@dataclass
class SparseFile:
    """What a compact safetensors file holds: the full state dict (masked weights decoded, zeros where
    pruned), the masks, and the metadata (``architecture`` decoded)."""

    state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def architecture(self) -> dict[str, Any]:
        return json.loads(self.metadata["architecture"])


def read_sparse(path: str | Path) -> SparseFile:
    """Read a file written by :func:`save_sparse` (one-line :class:`HaloPruneError` if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise HaloPruneError(f"{path} does not exist")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise HaloPruneError(f"{path} is not a haloprune sparse export (format {meta.get('format')!r})")
    stored = load_file(str(path))
    shapes = json.loads(meta["sparse_shapes"])
    state = {k: v for k, v in stored.items() if "::" not in k}
    masks = {}
    for name, shape in shapes.items():
        parts = {k.split("::", 1)[1]: v for k, v in stored.items() if k.startswith(f"{name}::")}
        state[name], masks[name] = _decode(parts, shape)
    return SparseFile(state, masks, meta)


# ------------------------------------------------------------------------------ compressed-tensors

#: The compressed-tensors format of :func:`save_compressed_tensors` and
#: :func:`haloprune.export.save_pretrained`: ``dense``, the weights in the model's own layout with the
#: pruned entries stored as zeros and the sparsity recorded in ``config.json``. (Before, haloprune wrote
#: ``sparse-bitmask``, which compressed-tensors >= 0.15 and vLLM no longer read.)
COMPRESSED_TENSORS_FORMAT = "dense"


def _masked_modules(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[str]:
    """Names of the modules that hold a masked parameter, in module order; a parameter shared by several
    modules (an embedding tied to the output head) names all of them."""
    masked = {id(model.get_parameter(name)) for name in masks}
    names: list[str] = []
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module.named_parameters(recurse=False):
            if id(param) in masked:
                name = mod_name or attr  # a parameter of the root module: named by itself
                if name not in names:
                    names.append(name)
    return names


def compressed_tensors_config(model: nn.Module) -> dict[str, Any]:
    """The ``quantization_config`` block that records ``model``'s pruning in compressed-tensors' terms.

    A compressed-tensors config with no quantization (no ``config_groups``) whose ``sparsity_config`` is
    compressed-tensors' ``DenseSparsityConfig``: format ``dense`` (the checkpoint holds dense tensors,
    zeros included), ``global_sparsity`` (the fraction of the masked weights that are pruned, all masked
    parameters together), ``sparsity_structure`` ``unstructured``, ``targets`` (the modules holding a
    masked weight) and ``ignore`` ``[]``. One-line :class:`HaloPruneError` if no masks are attached.
    """
    model = unwrap(model)
    masks = get_masks(model)
    if not masks:
        raise HaloPruneError("compressed-tensors export needs a pruned model (no masks are attached)")
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    block: dict[str, Any] = {"quant_method": "compressed-tensors", "format": COMPRESSED_TENSORS_FORMAT}
    # as compressed-tensors writes it (ModelCompressor.update_config), if it is installed
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        block["version"] = importlib.metadata.version("compressed-tensors")
    block["sparsity_config"] = {
        "format": COMPRESSED_TENSORS_FORMAT,
        "global_sparsity": 1 - kept / total,
        "sparsity_structure": "unstructured",
        "targets": _masked_modules(model, masks),
        "ignore": [],
    }
    return block


def save_compressed_tensors(
    model: nn.Module, folder: str | Path, *, config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (masks attached) as a dense compressed-tensors checkpoint: ``folder`` gets
    ``model.safetensors`` and ``config.json``.

    ``model.safetensors`` holds the model's own state dict (mask buffers left out; pruned weights are
    zeros), under the model's own names. ``config.json`` holds ``config`` (the model's own description,
    e.g. a Hugging Face config as a dict) with ``quantization_config`` set to
    :func:`compressed_tensors_config`. For a Hugging Face model use
    :func:`haloprune.export.save_pretrained`, which writes the same through ``model.save_pretrained`` so
    that ``from_pretrained`` loads it.
    """
    model = unwrap(model)
    refuse_sharded(model, "save_compressed_tensors")
    quantization = compressed_tensors_config(model)
    tensors = _unshared(model.state_dict())
    metadata = {
        "format": "pt",
        "sparsity": f"{quantization['sparsity_config']['global_sparsity']:.6f}",
        "haloprune_version": __version__,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps({**(config or {}), "quantization_config": quantization}, indent=2))
    return folder
