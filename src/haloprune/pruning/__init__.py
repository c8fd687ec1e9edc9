"""Pruning: masks that hold, magnitude and structured pruning, sparsity and cost, slimming.

``masks`` is the one place that knows how a mask is stored and keeps pruned weights at zero; every other
module here reads and writes masks through it.
"""

from __future__ import annotations

from haloprune.pruning.batchnorm import recalibrate_batchnorm
from haloprune.pruning.cost import Cost, count_cost
from haloprune.pruning.magnitude import (
    global_magnitude_prune,
    layerwise_magnitude_prune,
    magnitude_scores,
    masks_from_scores,
    zero_small_weights,
)
from haloprune.pruning.masks import (
    apply_masks_,
    attach_mask,
    attach_masks,
    get_masks,
    load_state_dict,
    masked_state_dict,
    remove_masks,
    restore_masks,
    without_masks,
)
from haloprune.pruning.slim import slim
from haloprune.pruning.sparsity import LayerSparsity, format_sparsity_report, sparsity_report
from haloprune.pruning.structured import group_prune, group_scores

__all__ = [
    "Cost",
    "LayerSparsity",
    "apply_masks_",
    "attach_mask",
    "attach_masks",
    "count_cost",
    "format_sparsity_report",
    "get_masks",
    "global_magnitude_prune",
    "group_prune",
    "group_scores",
    "layerwise_magnitude_prune",
    "load_state_dict",
    "magnitude_scores",
    "masked_state_dict",
    "masks_from_scores",
    "recalibrate_batchnorm",
    "remove_masks",
    "restore_masks",
    "slim",
    "sparsity_report",
    "without_masks",
    "zero_small_weights",
]
