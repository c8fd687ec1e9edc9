"""Atomic writes and safe reads for run-directory files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from haloprune.core.errors import HaloPruneError


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is fsynced and renamed over ``path``.

    The one way haloprune writes an output file: the folder is created if needed, the temporary file
    (``.<name>.<random>.tmp``, created empty) may be reopened or replaced by the writer, the finished file
    gets the user's usual permissions (``0o666 & ~umask``), and on any exception the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            # mkstemp (and writers such as safetensors) make 0600; give the user's usual permissions
            os.fchmod(fd, 0o666 & ~_UMASK)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        write(fh)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def save_text(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def save_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    save_text(json.dumps(obj, indent=2) + "\n", path)


def load_torch(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: a crafted pickle cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise HaloPruneError(f"{path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, altered or not a checkpoint at all
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HaloPruneError(f"{path} is not a readable haloprune checkpoint ({msg[:200]})") from None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_verified(obj: Any, path: str | Path) -> None:
    """Save a checkpoint with its sha256 beside it, keeping the previous good one as ``<name>.prev.pt``.

    Order: the current pair is renamed to ``.prev``, then the new file and then its checksum are written
    atomically. Whenever the process dies, :func:`load_verified` finds a complete, verified checkpoint.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    if path.exists() and _sidecar(path).exists():
        os.replace(path, _previous(path))
        os.replace(_sidecar(path), _sidecar(_previous(path)))
    _atomic_write(path, lambda fh: fh.write(data))
    save_text(hashlib.sha256(data).hexdigest() + "\n", _sidecar(path))


def load_verified(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load the newest checkpoint whose sha256 matches; fall back to the previous one, with a warning.

    A truncated or altered file is never loaded. With no good checkpoint at all: one clear error.
    """
    path = Path(path)
    problems = []
    for candidate in (path, _previous(path)):
        if not candidate.exists():
            continue
        side = _sidecar(candidate)
        if not side.exists():
            problems.append(f"{candidate.name} has no checksum file (interrupted while saving)")
            continue
        data = candidate.read_bytes()
        if hashlib.sha256(data).hexdigest() != side.read_text().strip():
            problems.append(f"{candidate.name} does not match its sha256 (truncated or altered)")
            continue
        if candidate != path:
            why = problems[-1] if problems else "missing"
            warnings.warn(f"{path} is unusable ({why}); using {candidate.name}", RuntimeWarning, stacklevel=2)
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as err:
            problems.append(
                f"{candidate.name} is not a readable checkpoint ({str(err).splitlines()[0][:120]})"
            )
    detail = "; ".join(problems) or "no checkpoint was written yet"
    raise HaloPruneError(f"no usable checkpoint in {path.parent}: {detail}")
