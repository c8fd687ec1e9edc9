"""Builders shared by several test modules (tiny nets, batches, datasets); fixtures are in conftest.py."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from haloprune.core.errors import HaloPruneError
from haloprune.data.datasets import DATASETS
from haloprune.data.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = REPO / "configs" / "paper"
MATRIX_CONFIGS = REPO / "configs" / "matrix"

# --- penalties: a float64 conv net and its penalised weights -----------------------------------------
CONV_NET_WEIGHTS = ["0.weight", "3.weight", "5.weight"]


def conv_net() -> nn.Module:
    """Conv + two Linear layers in float64, small enough for hand computations."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 4)
    ).double()


def conv_linear() -> nn.Module:
    """Conv + one Linear layer in float64."""
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double()


def conv_net_weights(model: nn.Module) -> list[torch.Tensor]:
    params = dict(model.named_parameters())
    return [params[n] for n in CONV_NET_WEIGHTS]


def flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def leaves(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in ts]


# --- training: a tiny MLP on random 12-feature, 4-class batches --------------------------------------
def mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def batches(
    n: int = 8, dtype: torch.dtype = torch.float32, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(32, 12, generator=g, dtype=dtype), torch.randint(0, 4, (32,), generator=g))
        for _ in range(n)
    ]


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    for x, y in batches(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


# --- data: tiny Fashion-MNIST-shaped IDX files (random pixels, never reported as results) ------------
FMNIST_FILES = dict(DATASETS["fashion-mnist"].files)


def tiny_arrays(n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }


def write_dataset(folder: Path, arrays: dict[str, np.ndarray] | None = None, *, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = tiny_arrays() if arrays is None else arrays
    for role, arr in arrays.items():
        write_idx(folder / (FMNIST_FILES[role] + (".gz" if gz else "")), arr, gzip=gz)
    return folder


# --- a byte-level language model: a tiny GPT on a few windows of the torch-source corpus -------------
TINY_GPT = [
    'data.name="torch-source"',
    "data.context=16",
    "data.train_subset=256",
    "data.val_size=32",
    "data.test_subset=32",
    'model.name="gpt"',
    "model.dim=32",
    "model.depth=1",
    "model.heads=2",
    'optim.optimizer="adamw"',
    "optim.momentum=0.0",
    "optim.lr=3e-3",
    "optim.batch_size=32",
    "optim.epochs=2",
]


def one_line(exc: pytest.ExceptionInfo[HaloPruneError]) -> str:
    """The message of a library error: one line, no surrounding space, a HaloPruneError."""
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert isinstance(exc.value, HaloPruneError)
    return msg


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- several processes on the CPU (gloo) -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _on_rank(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        HALOPRUNE_COMPILE="0",
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    from haloprune.training.distributed import teardown

    try:
        fn(rank, world, *args)
    except BaseException:
        teardown(wait=False)  # the others may never get there
        raise
    teardown()  # fn's sharded tensors released; no process leaves while another still finishes


def on_ranks(fn: Callable[..., None], world: int, *args: object) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes joined in a gloo group (``fn``: a
    top-level function of an importable module; it reports through files)."""
    import torch.multiprocessing as mp

    mp.start_processes(_on_rank, args=(world, free_port(), fn, args), nprocs=world, start_method="spawn")


def torchrun(nproc: int, *args: str) -> list[str]:
    """The command line ``torchrun --nproc_per_node=N --master_port=<free> ARGS...``."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        *args,
    ]
