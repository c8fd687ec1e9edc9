"""Atomic writes and safe reads for run-directory files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from haloprune.core.errors import HaloPruneError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the user's usual permissions
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def save_text(text: str, path: str | Path) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def save_json(obj: Any, path: str | Path) -> None:
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
