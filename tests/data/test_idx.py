"""IDX files (haloprune.data.idx): parsing, and every way a file can be damaged."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from haloprune.core.errors import DataError
from haloprune.data import (
    read_idx,
    write_idx,
)
from haloprune.data.idx import idx_bytes
from tests.helpers import one_line


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x.idx", arr, gzip=gz)  # suffix says nothing: gzip is sniffed
    out = read_idx(path, hashlib.sha256(idx_bytes(arr)).hexdigest())
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable


def test_read_idx_truncated(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data[:1000]))
    with pytest.raises(DataError) as exc:
        read_idx(path)
    msg = one_line(exc)
    assert "train-images-idx3-ubyte.gz" in msg and "truncated" in msg and "7840" in msg


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)) + b"xyz")
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert "3 trailing bytes" in one_line(exc)


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (b"\x12\x34\x08\x01", "not an IDX file"),
        (b"\x00\x00\x0d\x01", "only unsigned byte"),
        (b"\x00\x00\x42\x01", "unknown"),
    ],
)
def test_read_idx_bad_magic(tmp_path: Path, header: bytes, needle: str) -> None:
    path = tmp_path / "m"
    path.write_bytes(header + (4).to_bytes(4, "big") + b"\x00" * 4)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert needle in one_line(exc)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)), mtime=0)
    bad = bytearray(good)
    bad[20:30] = b"\xff" * 10  # garbage in the deflate stream
    cut = good[: len(good) // 2]  # gzip stream ends early
    for i, blob in enumerate([bytes(bad), cut, b"\x1f\x8b" + b"junk"]):
        path = tmp_path / f"c{i}.gz"
        path.write_bytes(blob)
        with pytest.raises(DataError) as exc:
            read_idx(path)
        assert path.name in one_line(exc)


def test_read_idx_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        read_idx(tmp_path / "empty")


def test_read_idx_sha_mismatch(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "s.gz", np.ones(7, dtype=np.uint8), gzip=True)
    with pytest.raises(DataError) as exc:
        read_idx(path, "0" * 64)
    msg = one_line(exc)
    assert "0" * 64 in msg and hashlib.sha256(idx_bytes(np.ones(7, dtype=np.uint8))).hexdigest() in msg
