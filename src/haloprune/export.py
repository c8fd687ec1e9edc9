"""Files for pruned models: compact safetensors (bit-exact, masks kept), a dense checkpoint that other
tools load (transformers, compressed-tensors, vLLM) or a slimmed ONNX graph.

``save_sparse(model, path, ...)`` writes the compact safetensors format of
:mod:`haloprune.pruning.storage` (masked weights as values plus a bitmask or positions; the model to build
in the metadata); ``load(path)`` rebuilds the model with identical weights and its masks attached.

``save_pretrained(model, folder)`` saves a pruned Hugging Face model with its own ``save_pretrained``:
the pruned weights are zeros in the model's own layout and ``config.json`` records the sparsity as a
compressed-tensors ``dense`` ``quantization_config``, so ``AutoModel*.from_pretrained(folder)`` gives the
same model back (compressed-tensors must be installed to load it). ``save_compressed_tensors(model,
folder)`` writes the same two files for any model (``haloprune export --format compressed-tensors``).

``export_onnx(model, path, example_input)`` writes the *slimmed* model (:func:`haloprune.pruning.slim`: dead
neurons and filters physically removed, plain dense layers) as an ONNX graph with a dynamic batch
dimension, for onnxruntime and other runtimes; it needs the ``onnx`` extra (``pip install
'haloprune[onnx]'``). :func:`export_run` is what ``haloprune export`` does with a finished run.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from haloprune.build import example_input, network_kwargs
from haloprune.core.errors import HaloPruneError
from haloprune.core.io import atomic_path
from haloprune.core.params import unwrap
from haloprune.models import build_model
from haloprune.pruning import Cost, count_cost, global_magnitude_prune, group_prune, sparsity_report
from haloprune.pruning.masks import attach_masks, without_masks
from haloprune.pruning.slim import slim
from haloprune.pruning.storage import (
    COMPRESSED_TENSORS_FORMAT,
    FORMAT,
    compressed_tensors_config,
    read_metadata,
    read_sparse,
    save_compressed_tensors,
    save_sparse,
)
from haloprune.training.run import load_trained

# the compact format's writer and readers live in haloprune.pruning.storage; named here as before
__all__ = [
    "COMPRESSED_TENSORS_FORMAT",
    "FORMAT",
    "FORMATS",
    "compressed_tensors_config",
    "export_onnx",
    "export_run",
    "load",
    "read_metadata",
    "save_compressed_tensors",
    "save_pretrained",
    "save_sparse",
]


def load(path: str | Path) -> nn.Module:
    """Rebuild the model stored by :func:`save_sparse`: same weights bit for bit, masks attached."""
    stored = read_sparse(path)
    arch = stored.architecture
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    state = stored.state
    attach_masks(model, stored.masks)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise HaloPruneError(f"{path} lacks {sorted(missing)[:3]} for model {arch['name']!r}")
    model.load_state_dict({**model.state_dict(), **state})
    return model.eval()


def save_pretrained(model: nn.Module, folder: str | Path, **kwargs: Any) -> Path:
    """Save a pruned Hugging Face model (a transformers ``PreTrainedModel``, masks attached) to ``folder``
    with ``model.save_pretrained(folder, **kwargs)``, so that ``from_pretrained(folder)`` loads it.

    The weights are the model's own (mask buffers left out, pruned entries zero) in its own layout;
    ``config.json`` also gets ``quantization_config`` = :func:`compressed_tensors_config`, the sparsity in
    compressed-tensors' ``dense`` form. ``kwargs`` go to ``save_pretrained`` (``max_shard_size``,
    ``push_to_hub``, ...; a ``state_dict`` given there is saved without its masks). The model is left as it
    was. One-line :class:`HaloPruneError` for a model that is not a transformers model, has no masks, or is
    quantized.
    """
    model = unwrap(model)
    save, config = getattr(model, "save_pretrained", None), getattr(model, "config", None)
    if not callable(save) or config is None:
        raise HaloPruneError(
            f"save_pretrained needs a Hugging Face transformers model (PreTrainedModel), not "
            f"{type(model).__name__}; use save_compressed_tensors(model, folder) for other models"
        )
    quantization = compressed_tensors_config(model)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer.quantization_config, "is_quantized", True):
        method = getattr(quantizer.quantization_config, "quant_method", "?")
        method = getattr(method, "value", method)
        raise HaloPruneError(f"save_pretrained writes dense weights; this model is quantized ({method})")
    state = kwargs.pop("state_dict", None)
    state = model.state_dict() if state is None else without_masks(state)  # a given one may carry masks
    missing = object()
    before = config.__dict__.get("quantization_config", missing)
    try:
        config.quantization_config = quantization
        if quantizer is not None:  # loaded from such a checkpoint: a compressed-tensors quantizer that
            model.hf_quantizer = None  # quantizes nothing, with which save_pretrained ignores state_dict
        save(folder, state_dict=state, **kwargs)
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
        if before is missing:
            del config.quantization_config
        else:
            config.quantization_config = before
    return Path(folder)


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


FORMATS = ("safetensors", "onnx", "compressed-tensors")


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
    keeps the masks (:func:`save_sparse`); ``fmt="onnx"`` writes the slimmed model (:func:`export_onnx`);
    ``fmt="compressed-tensors"`` a folder with the dense weights (pruned ones zero) and a ``config.json``
    recording the sparsity in compressed-tensors' ``dense`` form (:func:`save_compressed_tensors`).
    """
    if not 0.0 <= sparsity < 1.0:
        raise HaloPruneError(f"--sparsity must be in [0, 1), got {sparsity}")
    if fmt not in FORMATS:
        raise HaloPruneError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    cfg, model, _ = load_trained(run_dir)
    model.eval()
    kwargs, x = network_kwargs(cfg), example_input(cfg)
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
    suffix = "-compressed-tensors" if fmt == "compressed-tensors" else f".{fmt}"
    out = Path(out) if out is not None else Path(run_dir) / f"model-{sparsity:g}{suffix}"
    architecture = {"name": cfg.model.name, "kwargs": kwargs}
    if fmt == "onnx":
        export_onnx(model, out, x)
    elif fmt == "compressed-tensors":
        save_compressed_tensors(model, out, config={"haloprune": {"architecture": architecture}})
    else:
        save_sparse(
            model,
            out,
            architecture=architecture,
            extra={"run": str(run_dir), "dataset": cfg.data.name},
        )
    masked = count_cost(model, x)
    small = count_cost(slim(model, x), x, nonzero_only=False)
    dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    size = sum(f.stat().st_size for f in out.iterdir()) if out.is_dir() else out.stat().st_size
    summary = (
        f"{out}: {size:,} bytes ({100 * size / dense_bytes:.1f}% of the dense fp32 parameters, "
        f"{dense_bytes:,} bytes)\n{_cost_line('dense', dense)}\n{_cost_line('pruned (nonzero)', masked)}\n"
        f"{_cost_line('slimmed (dense layers)', small)}"
    )
    return out, summary


def _cost_line(label: str, cost: Cost) -> str:
    return f"  {label:<24} {cost.params:>12,} weights {cost.macs:>14,} MACs per input"
