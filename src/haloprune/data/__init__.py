"""Datasets: IDX parsing, discovery of installed data, verified downloads, splits and batching."""

from __future__ import annotations

from haloprune.data.datasets import (
    DATASETS,
    DatasetSpec,
    SplitData,
    find_data_dir,
    iterate_batches,
    load_dataset,
)
from haloprune.data.download import download
from haloprune.data.idx import read_idx, write_idx

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "SplitData",
    "download",
    "find_data_dir",
    "iterate_batches",
    "load_dataset",
    "read_idx",
    "write_idx",
]
