"""Config in, objects out: the network, penalty and data a config describes (nothing here trains)."""

from __future__ import annotations

import inspect
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from haloprune.config import DataConfig, RunConfig, TrainConfig
from haloprune.core.errors import ConfigError
from haloprune.data import SplitData, load_dataset
from haloprune.data.datasets import get_spec
from haloprune.models import MODELS, build_model
from haloprune.penalties import Penalty, build_penalty


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
    )
    split.augment = data.augmented
    return split.to(device)


def network_kwargs(run: RunConfig) -> dict[str, Any]:
    """The constructor arguments of the network ``run.model`` names, shaped for ``run.data``: input
    channels, image side (after ``data.pad_to``) and classes from the dataset; ``width`` and the
    transformer's shape (``dim``, ``depth``, ``heads``, ``mlp_ratio``, ``patch``) from the model, each only
    where the network takes it."""
    spec = get_spec(run.data.name)
    channels, side, _ = spec.image_shape
    kwargs: dict[str, Any] = {
        "in_channels": channels,
        "image_size": run.data.pad_to or side,
        "num_classes": spec.num_classes,
    }
    takes = inspect.signature(MODELS[run.model.name]).parameters
    for key, value in run.model.options().items():
        if key not in takes:
            hint = "leave it at 1" if key == "width" else "leave it unset"
            raise ConfigError(f"model.{key}: {run.model.name} has no {key} setting ({hint})")
        kwargs[key] = value
    return kwargs


def build_network(run: RunConfig) -> nn.Module:
    """The (untrained) network a run config describes (see :func:`network_kwargs`)."""
    try:
        return build_model(run.model.name, **network_kwargs(run))
    except ValueError as err:  # a shape the network cannot take (e.g. vit: dim not divisible by heads)
        raise ConfigError(f"model: {err}") from None


def build(cfg: TrainConfig, device: torch.device | str = "cpu") -> tuple[nn.Module, Penalty | None]:
    """The model and penalty a config describes, freshly initialised from ``cfg.seed``."""
    seed_everything(cfg.seed)
    model = build_network(cfg).to(device)
    penalty = None
    if cfg.penalty.name != "none":
        penalty = build_penalty(cfg.penalty.name, model, **cfg.penalty.kwargs()).to(device)
    return model, penalty
