"""Reading and writing IDX files (the MNIST / Fashion-MNIST format), gzipped or raw.

Every problem with a file (missing, truncated, trailing bytes, bad magic, corrupt gzip, wrong
checksum) raises :class:`~haloprune.core.errors.DataError` with a one-line message that names the file
and says how to fix it.
"""

from __future__ import annotations

import gzip as _gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from haloprune.core.errors import DataError

__all__ = ["DEFAULT_HINT", "read_idx", "write_idx"]

GZIP_MAGIC = b"\x1f\x8b"

#: IDX type codes; only unsigned bytes are supported.
_IDX_TYPES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}

DEFAULT_HINT = (
    "replace it with a good copy (e.g. `haloprune data download <dataset>`), "
    "or point --data-dir / HALOPRUNE_DATA at good files"
)


def _where(path: Path) -> str:
    return f"{path.name} in {path.parent}"


def _fail(path: Path, problem: str, hint: str) -> DataError:
    return DataError(f"{_where(path)} {problem}; {hint}")


def _decompress(path: Path, raw: bytes, hint: str) -> bytes:
    try:
        return _gzip.decompress(raw)
    except (_gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"is not a valid gzip file ({detail})", hint) from None


def read_idx(path: Path, expected_sha256: str | None = None, *, hint: str = DEFAULT_HINT) -> np.ndarray:
    """Read an IDX file (gzip detected by its magic bytes) into a read-only uint8 array.

    If ``expected_sha256`` is given, the sha256 of the decompressed IDX bytes must match it.
    ``hint`` is the "how to fix it" half of error messages.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _fail(path, "does not exist", hint) from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})", hint) from None

    data = _decompress(path, raw, hint) if raw[:2] == GZIP_MAGIC else raw
    if not data:
        raise _fail(path, "is empty", hint)
    if len(data) < 4:
        raise _fail(path, f"is truncated: only {len(data)} bytes, not even an IDX header", hint)
    if data[0] != 0 or data[1] != 0:
        raise _fail(
            path,
            f"is not an IDX file (magic bytes {data[:4].hex(' ')}, expected 00 00 08 <ndim>)",
            hint,
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_TYPES:
        raise _fail(path, f"has an unknown IDX type code 0x{type_code:02x}", hint)
    if type_code != 0x08:
        raise _fail(
            path,
            f"holds {_IDX_TYPES[type_code]} data (type 0x{type_code:02x}), "
            "but only unsigned byte (0x08) is supported",
            hint,
        )
    if ndim == 0:
        raise _fail(path, "declares 0 dimensions", hint)
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise _fail(
            path,
            f"is truncated: the header needs {header_len} bytes for {ndim} dims, found {len(data)}",
            hint,
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    found = len(data) - header_len
    if found < expected:
        raise _fail(
            path,
            f"is truncated: expected {expected} bytes of data for shape {dims}, found {found}",
            hint,
        )
    if found > expected:
        raise _fail(
            path,
            f"has {found - expected} trailing bytes after the {expected} bytes of data for shape {dims}",
            hint,
        )
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise _fail(
                path,
                f"does not match its checksum (expected sha256 {expected_sha256}, got {actual})",
                hint,
            )
    # frombuffer over immutable bytes gives a read-only array: safe to cache and share.
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as raw (uncompressed) IDX bytes."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"write_idx supports only uint8 arrays, got {arr.dtype}")
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"IDX arrays need 1 to 255 dimensions, got {arr.ndim}")
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def write_idx(path: Path, array: np.ndarray, gzip: bool) -> Path:
    """Write a uint8 array as an IDX file, gzipped (deterministically, mtime 0) if ``gzip``."""
    payload = idx_bytes(array)
    if gzip:
        payload = _gzip.compress(payload, mtime=0)
    path = Path(path)
    path.write_bytes(payload)
    return path
