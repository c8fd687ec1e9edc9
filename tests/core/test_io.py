"""Verified checkpoints and atomic files (haloprune.core.io): fallback to the last good copy, damage refused,
crafted pickles never executed, normal file permissions."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch

from haloprune.core.errors import HaloPruneError
from haloprune.core.io import load_torch, load_verified, save_verified


def test_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    from haloprune.core.io import save_json

    save_json({"a": 1}, tmp_path / "x.json")
    assert (tmp_path / "x.json").stat().st_mode & 0o044 == 0o044  # readable by group/others (umask 022)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_verified_checkpoints_fall_back_and_refuse_damage(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_verified({"epoch": 1, "w": torch.ones(3)}, path)
    save_verified({"epoch": 2, "w": torch.full((3,), 2.0)}, path)
    assert load_verified(path)["epoch"] == 2
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.warns(RuntimeWarning, match="using checkpoint.prev.pt"):
        assert load_verified(path)["epoch"] == 1
    prev = tmp_path / "checkpoint.prev.pt"
    data = bytearray(prev.read_bytes())
    data[-20] ^= 0xFF  # altered
    prev.write_bytes(bytes(data))
    with pytest.raises(HaloPruneError, match="no usable checkpoint") as err:
        load_verified(path)
    assert "sha256" in str(err.value) and "\n" not in str(err.value)


def test_crafted_pickle_in_a_run_directory_cannot_execute(tmp_path: Path) -> None:
    _Evil.marker = str(tmp_path / "pwned")
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps({"model": _Evil()}, protocol=2))
    with pytest.raises(HaloPruneError, match="not a readable haloprune checkpoint"):
        load_torch(evil)
    (tmp_path / "checkpoint.pt").write_bytes(evil.read_bytes())
    (tmp_path / "checkpoint.pt.sha256").write_text(hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.raises(HaloPruneError, match="not a readable checkpoint"):
        load_verified(tmp_path / "checkpoint.pt")
    assert not (tmp_path / "pwned").exists()
