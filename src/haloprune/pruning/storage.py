"""Pruned models on disk: the compact safetensors format (bit-exact, masks kept).

``save_sparse(model, path, ...)`` writes a safetensors file in which every masked weight is stored as its
nonzero values plus either a bitmask (1 bit per weight) or the flat positions of the survivors (uint16 or
int32), whichever is smaller for that tensor; everything else (biases, BatchNorm statistics) is stored
densely. The file's metadata says which model to build (registry name and arguments), the sparsity and the
haloprune version. :func:`read_sparse` gives back the state dict and the masks;
:func:`haloprune.export.load` rebuilds the model from them. Files are read with safetensors, which stores
plain tensors only: loading one cannot run code.
"""

from __future__ import annotations

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
from haloprune.pruning.masks import get_masks, without_masks

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


def save_sparse(
    model: nn.Module, path: str | Path, *, architecture: dict[str, Any], extra: dict[str, str] | None = None
) -> Path:
    """Write ``model`` (masks attached) compactly to ``path`` (safetensors)."""
    model = unwrap(model)
    masks = get_masks(model)
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, value in without_masks(model.state_dict()).items():
        if name in masks:
            for part, t in _encode(value, masks[name]).items():
                tensors[f"{name}::{part}"] = t
            shapes[name] = list(value.shape)
        else:
            tensors[name] = value.detach().cpu().contiguous()
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

#: The sparse format of the compressed-tensors library (``sparse-bitmask``): what vLLM's and
#: llmcompressor's loaders read for unstructured sparsity.
COMPRESSED_TENSORS_FORMAT = "sparse-bitmask"
_CT_PARTS = ("compressed", "bitmask", "shape", "row_offsets")


def save_compressed_tensors(
    model: nn.Module, folder: str | Path, *, config: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (masks attached) as a compressed-tensors ``sparse-bitmask`` checkpoint: ``folder``
    gets ``model.safetensors`` and ``config.json``.

    Each masked weight ``<module>.weight`` becomes ``<module>.compressed`` (its nonzero values in row-major
    order, in its dtype), ``<module>.bitmask`` (``weight != 0`` packed 8 per byte along the last
    dimension, little bit order), ``<module>.shape`` and ``<module>.row_offsets`` (where each row's values
    start); every other tensor is stored as is. ``config.json`` holds ``config`` (the model's own
    description, e.g. a Hugging Face config) with ``quantization_config`` set to a compressed-tensors
    compression config whose ``sparsity_config`` names the compressed modules and the global sparsity.
    """
    model = unwrap(model)
    masks = get_masks(model)
    if not masks:
        raise HaloPruneError("compressed-tensors export needs a pruned model (no masks are attached)")
    tensors: dict[str, torch.Tensor] = {}
    targets = []
    for name, value in without_masks(model.state_dict()).items():
        value = value.detach().cpu().contiguous()
        if name not in masks:
            tensors[name] = value
            continue
        if not name.endswith(".weight") or value.dim() < 2:
            raise HaloPruneError(f"compressed-tensors stores masked '<module>.weight' tensors, not {name}")
        module = name[: -len(".weight")]
        nonzero = value != 0
        counts = nonzero.reshape(-1, value.shape[-1]).sum(dim=-1)
        tensors[f"{module}.compressed"] = value[nonzero]
        tensors[f"{module}.bitmask"] = torch.from_numpy(
            np.packbits(nonzero.numpy().astype(np.uint8), axis=-1, bitorder="little")
        )
        tensors[f"{module}.shape"] = torch.tensor(list(value.shape), dtype=torch.int64)
        tensors[f"{module}.row_offsets"] = torch.cumsum(counts, 0) - counts
        targets.append(module)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    sparsity = {
        "format": COMPRESSED_TENSORS_FORMAT,
        "global_sparsity": 1 - kept / total,
        "sparsity_structure": "unstructured",
        "targets": targets,
        "ignore": [],
    }
    # as compressed-tensors writes it for a sparse, unquantized model (no quantization fields)
    quantization = {"quant_method": "compressed-tensors", "sparsity_config": sparsity}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "haloprune_version": __version__})
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps({**(config or {}), "quantization_config": quantization}, indent=2))
    return folder
