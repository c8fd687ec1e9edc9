"""haloprune: learn sparse networks with HALO (Hierarchical Adaptive Lasso), prune once, deploy.

from haloprune import HALO, global_magnitude_prune, sparsity_report
"""

from __future__ import annotations

from haloprune.core import __version__
from haloprune.export import load, save_sparse
from haloprune.models import MODELS, build_model
from haloprune.penalties import HALO, L1, PENALTIES, Penalty, build_penalty
from haloprune.pruning import (
    count_cost,
    format_sparsity_report,
    global_magnitude_prune,
    group_prune,
    layerwise_magnitude_prune,
    recalibrate_batchnorm,
    sparsity_report,
)
from haloprune.pruning.masks import (
    apply_masks_,
    get_masks,
    load_state_dict,
    masked_state_dict,
    remove_masks,
    restore_masks,
)
from haloprune.pruning.slim import slim

__all__ = [
    "HALO",
    "L1",
    "MODELS",
    "PENALTIES",
    "Penalty",
    "__version__",
    "apply_masks_",
    "build_model",
    "build_penalty",
    "count_cost",
    "format_sparsity_report",
    "get_masks",
    "global_magnitude_prune",
    "group_prune",
    "layerwise_magnitude_prune",
    "load",
    "load_state_dict",
    "masked_state_dict",
    "recalibrate_batchnorm",
    "remove_masks",
    "restore_masks",
    "save_sparse",
    "slim",
    "sparsity_report",
]
