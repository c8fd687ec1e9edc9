"""Config in, objects out: the network, penalty and data a config describes (nothing here trains)."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from haloprune.config import DataConfig, RunConfig, TrainConfig
from haloprune.core.errors import ConfigError
from haloprune.core.io import load_torch, sha256_file
from haloprune.data import SplitData, load_dataset
from haloprune.data.datasets import get_spec
from haloprune.models import MODELS, build_model
from haloprune.penalties import Penalty, build_penalty
from haloprune.pruning.masks import attach_masks, load_state_dict, without_masks
from haloprune.pruning.storage import FORMAT, read_metadata, read_sparse


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(data: DataConfig, seed: int, device: torch.device | str = "cpu") -> SplitData:
    """The dataset a config section describes, split with ``seed``, as tensors on ``device``."""
    split = load_dataset(
        data.name,
        data.dir,
        val_size=data.val_size,
        seed=seed,
        train_subset=data.train_subset,
        test_subset=data.test_subset,
        pad_to=data.pad_to,
        normalize=data.normalize,
        context=data.context,
    )
    split.augment = data.augmented
    return split.to(device)


def network_kwargs(run: RunConfig) -> dict[str, Any]:
    """The constructor arguments of the network ``run.model`` names, shaped for ``run.data``: input
    channels, image side (after ``data.pad_to``) and classes from an image dataset; the vocabulary (the
    256 byte values) and context length (``data.context``: the model's positions are the windows'
    length, one setting) from a text corpus; ``width`` and the transformer's shape (``dim``, ``depth``,
    ``heads``, ``mlp_ratio``, ``patch``) from the model, each only where the network takes it. A network
    that cannot take the dataset's kind of input (a LeNet on text, the GPT on images) is a one-line
    :class:`ConfigError`."""
    spec = get_spec(run.data.name)
    kwargs: dict[str, Any]
    if spec.corpus is not None:
        kwargs = {"vocab_size": spec.num_classes, "context": run.data.context_length}
    else:
        channels, side, _ = spec.image_shape
        kwargs = {
            "in_channels": channels,
            "image_size": run.data.pad_to or side,
            "num_classes": spec.num_classes,
        }
    takes = inspect.signature(MODELS[run.model.name]).parameters
    missing = [key for key in kwargs if key not in takes]
    if missing:
        kind = "a text corpus" if spec.corpus is not None else "images"
        raise ConfigError(
            f"model.name: {run.model.name} cannot take {run.data.name} ({kind}): it has no {missing[0]} "
            "setting; choose a model for that data"
        )
    for key, value in run.model.options().items():
        if key not in takes:
            hint = "leave it at 1" if key == "width" else "leave it unset"
            raise ConfigError(f"model.{key}: {run.model.name} has no {key} setting ({hint})")
        kwargs[key] = value
    return kwargs


def example_input(run: RunConfig) -> torch.Tensor:
    """One input of the network :func:`network_kwargs` shapes for ``run.data`` (tracing, export, cost):
    a zero image ``(1, C, H, W)``, or a window of zero bytes ``(1, context)`` of a text corpus."""
    kwargs = network_kwargs(run)
    if "context" in kwargs:
        return torch.zeros(1, kwargs["context"], dtype=torch.long)
    return torch.zeros(1, kwargs["in_channels"], kwargs["image_size"], kwargs["image_size"])


def build_network(run: RunConfig) -> nn.Module:
    """The network a run config describes (see :func:`network_kwargs`): freshly initialised, or with the
    weights of ``model.init_from`` (see :func:`init_from`)."""
    try:
        model = build_model(run.model.name, **network_kwargs(run))
    except ValueError as err:  # a shape the network cannot take (e.g. vit: dim not divisible by heads)
        raise ConfigError(f"model: {err}") from None
    if run.model.init_from is not None:
        init_from(model, run.model.init_from)
    return model


def _source_file(source: str | Path) -> Path:
    """The file ``model.init_from`` reads: ``source``, or a finished run directory's ``model.pt``."""
    path = Path(source)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise ConfigError(f"model.init_from {source}: no model.pt there (not a finished haloprune run)")
        path = path / "model.pt"
    if not path.is_file():
        raise ConfigError(f"model.init_from {source} does not exist")
    return path


def source_digest(source: str | Path) -> str:
    """The SHA-256 of the weights file ``model.init_from`` names (a sweep's jobs depend on its contents)."""
    return sha256_file(_source_file(source))


def initial_state(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The state dict and the masks that ``source`` holds: a finished run directory (its ``model.pt``,
    masks inside the state dict), a ``.safetensors`` file (haloprune's sparse export with its masks, or a
    plain state dict), or a torch file holding a state dict (or a dict with it under ``"model"`` /
    ``"state_dict"``)."""
    path = _source_file(source)
    if path.suffix == ".safetensors":
        if read_metadata(path).get("format") == FORMAT:
            sparse = read_sparse(path)
            return sparse.state, sparse.masks
        return dict(load_file(str(path))), {}
    state = load_torch(path)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.init_from {source}: not a state dict (a dict of tensors)")
    return state, {}


def init_from(model: nn.Module, source: str | Path) -> None:
    """Load the weights (and masks) of ``source`` (see :func:`initial_state`) into ``model``, in place;
    any missing, extra or differently shaped tensor is a one-line :class:`ConfigError`."""
    state, masks = initial_state(source)
    own, theirs = model.state_dict(), without_masks(state)  # a saved state may carry its masks
    problems = [f"{k} missing" for k in own if k not in theirs]
    problems += [f"{k} not in {type(model).__name__}" for k in theirs if k not in own]
    problems += [
        f"{k} is {list(theirs[k].shape)} there but {list(v.shape)} here"
        for k, v in own.items()
        if k in theirs and theirs[k].shape != v.shape
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"model.init_from {source} does not fit the model: {'; '.join(problems[:3])}{more}")
    attach_masks(model, masks)
    load_state_dict(model, {**model.state_dict(), **state}, restore=False)  # with the masks it carries


def build(
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    prepare: Callable[[nn.Module], nn.Module] | None = None,
) -> tuple[nn.Module, Penalty | None]:
    """The model and penalty a config describes, freshly initialised from ``cfg.seed``. ``prepare`` (e.g.
    sharding with FSDP2) is applied to the model before the penalty is built on it."""
    seed_everything(cfg.seed)
    model = build_network(cfg).to(device)
    if prepare is not None:
        model = prepare(model)
    penalty = None
    if cfg.penalty.name != "none":
        penalty = build_penalty(cfg.penalty.name, model, **cfg.penalty.kwargs()).to(device)
    return model, penalty
