"""Moved: the training loop is ``haloprune.training`` and the config-to-objects factory ``haloprune.build``.
This module re-exports the old names so that ``haloprune.train.fit`` keeps working."""

from haloprune.build import build, build_network, load_data, network_kwargs, seed_everything
from haloprune.training import LRSchedule, TrainResult, build_optimizer, evaluate, fit, load_trained, train

__all__ = [
    "LRSchedule",
    "TrainResult",
    "build",
    "build_network",
    "build_optimizer",
    "evaluate",
    "fit",
    "load_data",
    "load_trained",
    "network_kwargs",
    "seed_everything",
    "train",
]
