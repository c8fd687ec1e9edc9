"""Atomic writes and safe reads for run-directory files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import HaloPruneError


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
