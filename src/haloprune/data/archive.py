"""Verified, contained extraction of downloaded archives (the CIFAR python archives are tar.gz).

The archive's sha256 is checked *before* anything is read from it, and extraction uses Python's
``"data"`` filter: absolute paths, ``..`` components, links pointing outside the target, device files
and setuid bits are refused, so a crafted archive cannot write outside ``dest``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from haloprune.core.errors import DataError
from haloprune.core.io import sha256_file


def safe_extract(archive: str | Path, dest: str | Path, expected_sha256: str | None) -> Path:
    """Check ``archive`` against ``expected_sha256`` (if given), then extract it under ``dest``."""
    archive, dest = Path(archive), Path(dest)
    if expected_sha256 is not None:
        actual = sha256_file(archive)
        if actual != expected_sha256:
            raise DataError(
                f"{archive.name}: sha256 {actual} does not match the expected {expected_sha256}; "
                "delete it and download it again"
            )
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as err:
        raise DataError(
            f"{archive.name} tries to write outside {dest} ({err}); refusing to extract it"
        ) from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive.name} is not a readable tar archive ({err})") from None
    return dest
