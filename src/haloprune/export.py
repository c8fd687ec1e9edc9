"""Files for pruned models: compact safetensors (bit-exact, masks kept) or a slimmed ONNX graph.

``save_sparse(model, path, ...)`` writes a safetensors file in which every masked weight is stored as its
nonzero values plus either a bitmask (1 bit per weight) or the flat positions of the survivors (uint16 or
int32), whichever is smaller for that tensor; everything else (biases, BatchNorm statistics) is stored
densely. The file's metadata says which model to build (registry name and arguments), the sparsity and the
haloprune version. ``load(path)`` rebuilds the model with identical weights and its masks attached.
Files are read with safetensors, which stores plain tensors only: loading one cannot run code.

``export_onnx(model, path, example_input)`` writes the *slimmed* model (:func:`haloprune.pruning.slim`: dead
neurons and filters physically removed, plain dense layers) as an ONNX graph with a dynamic batch
dimension, for onnxruntime and other runtimes; it needs the ``onnx`` extra (``pip install
'haloprune[onnx]'``). :func:`export_run` is what ``haloprune export`` does with a finished run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from haloprune.build import network_kwargs
from haloprune.core import __version__
from haloprune.core.errors import HaloPruneError
from haloprune.core.io import atomic_path
from haloprune.core.params import unwrap
from haloprune.models import build_model
from haloprune.pruning import Cost, count_cost, global_magnitude_prune, group_prune, sparsity_report
from haloprune.pruning.masks import attach_mask, get_masks, without_masks
from haloprune.pruning.slim import slim
from haloprune.training.run import load_trained

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


def load(path: str | Path) -> nn.Module:
    """Rebuild the model stored by :func:`save_sparse`: same weights bit for bit, masks attached."""
    path = Path(path)
    if not path.is_file():
        raise HaloPruneError(f"{path} does not exist")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise HaloPruneError(f"{path} is not a haloprune sparse export (format {meta.get('format')!r})")
    arch = json.loads(meta["architecture"])
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    stored = load_file(str(path))
    shapes = json.loads(meta["sparse_shapes"])
    state = {k: v for k, v in stored.items() if "::" not in k}
    for name, shape in shapes.items():
        parts = {k.split("::", 1)[1]: v for k, v in stored.items() if k.startswith(f"{name}::")}
        state[name], mask = _decode(parts, shape)
        attach_mask(model, name, mask)
    missing = set(without_masks(model.state_dict())) - set(state)
    if missing:
        raise HaloPruneError(f"{path} lacks {sorted(missing)[:3]} for model {arch['name']!r}")
    model.load_state_dict({**model.state_dict(), **state})
    return model.eval()


def export_onnx(
    model: nn.Module, path: str | Path, example_input: torch.Tensor, *, opset: int | None = None
) -> Path:
    """Slim ``model`` (eval mode) and write it to ``path`` as one self-contained ONNX file.

    The batch dimension (input ``input``, output ``output``) is dynamic; ``example_input`` fixes the other
    dimensions. Raises :class:`HaloPruneError` if the ``onnx`` extra is not installed.
    """
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise HaloPruneError(f"ONNX export needs {' and '.join(missing)}: pip install 'haloprune[onnx]'")
    small = slim(model, example_input)
    path = Path(path)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            small,
            (example_input,),
            str(tmp),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    return path


FORMATS = ("safetensors", "onnx")


def export_run(
    run_dir: str | Path,
    sparsity: float,
    *,
    fmt: str = "safetensors",
    out: str | Path | None = None,
    structured: bool = False,
) -> tuple[Path, str]:
    """Prune a finished run once and write it (``haloprune export``); returns the file and a summary.

    Unstructured (default): global magnitude pruning at ``sparsity`` (the prunable weights of the run's
    ``prune.scope``). ``structured``: whole neurons/filters (:func:`~haloprune.pruning.group_prune`) until
    the slimmed model has no more weights than the unstructured one would keep. ``fmt="safetensors"``
    keeps the masks (:func:`save_sparse`); ``fmt="onnx"`` writes the slimmed model (:func:`export_onnx`).
    """
    if not 0.0 <= sparsity < 1.0:
        raise HaloPruneError(f"--sparsity must be in [0, 1), got {sparsity}")
    if fmt not in FORMATS:
        raise HaloPruneError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    cfg, model, _ = load_trained(run_dir)
    model.eval()
    kwargs = network_kwargs(cfg)
    x = torch.zeros(1, kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])
    dense = count_cost(model, x, nonzero_only=False)
    selection = cfg.prune.selection()
    if structured:
        in_scope = sparsity_report(model, **selection)[-1].params
        try:
            group_prune(model, x, params=dense.params - round(sparsity * in_scope), scope=selection["scope"])
        except ValueError as err:
            raise HaloPruneError(str(err)) from None
    else:
        global_magnitude_prune(model, sparsity, **selection)
    out = Path(out) if out is not None else Path(run_dir) / f"model-{sparsity:g}.{fmt}"
    if fmt == "onnx":
        export_onnx(model, out, x)
    else:
        save_sparse(
            model,
            out,
            architecture={"name": cfg.model.name, "kwargs": kwargs},
            extra={"run": str(run_dir), "dataset": cfg.data.name},
        )
    masked = count_cost(model, x)
    small = count_cost(slim(model, x), x, nonzero_only=False)
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    size = out.stat().st_size
    summary = (
        f"{out}: {size:,} bytes ({100 * size / dense_bytes:.1f}% of the dense fp32 parameters, "
        f"{dense_bytes:,} bytes)\n{_cost_line('dense', dense)}\n{_cost_line('pruned (nonzero)', masked)}\n"
        f"{_cost_line('slimmed (dense layers)', small)}"
    )
    return out, summary


def _cost_line(label: str, cost: Cost) -> str:
    return f"  {label:<24} {cost.params:>12,} weights {cost.macs:>14,} MACs per input"
