"""Download a dataset's 4 IDX archives with mirror fallback and checksum verification.

Each file is streamed to a hidden temporary file inside ``dest``, verified (sha256 of the
decompressed IDX payload, and of the archive when known) and only then renamed into place
(:func:`haloprune.core.io.atomic_path`), so ``dest`` never holds a partial or unverified file.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from haloprune.core.errors import DataError
from haloprune.core.io import atomic_path
from haloprune.data.cifar import download_archive
from haloprune.data.datasets import ROLES, DatasetSpec, get_spec, resolve_file
from haloprune.data.http import RETRY, fetch, try_mirrors
from haloprune.data.idx import GZIP_MAGIC, read_idx

__all__ = ["download"]


def _is_verified(path: Path, payload_sha256: str | None) -> bool:
    try:
        read_idx(path, payload_sha256)
    except DataError:
        return False
    return True


def _download_one(spec: DatasetSpec, role: str, dest: Path, mirrors: Sequence[str], timeout: float) -> Path:
    fname = spec.files[role]
    archive = f"{fname}.gz"
    target = dest / archive
    payload_sha = spec.payload_sha256.get(role)
    archive_sha = (spec.archive_sha256 or {}).get(role)

    def attempt(url: str) -> Path:
        with atomic_path(target) as tmp:  # renamed into place only once verified
            with tmp.open("wb") as out:
                got_archive_sha = fetch(url, out, timeout)
            try:
                read_idx(tmp)
            except DataError as exc:
                problem = str(exc).split("; ", 1)[0].replace(f"{tmp.name} in {dest}", archive)
                raise DataError(f"{problem} (downloaded from {url}); {RETRY}") from None
            actual = _payload_sha(tmp)
            if payload_sha is not None and actual != payload_sha:
                raise DataError(
                    f"{archive} from {url} failed its checksum: expected payload sha256 {payload_sha}, "
                    f"got {actual}; {RETRY}"
                )
            if archive_sha is not None and got_archive_sha != archive_sha:
                raise DataError(
                    f"{archive} from {url} failed its checksum: expected archive sha256 {archive_sha}, "
                    f"got {got_archive_sha}; {RETRY}"
                )
        return target

    return try_mirrors(archive, spec.name, mirrors, attempt, "install the files yourself")


def _payload_sha(path: Path) -> str:
    """sha256 of the decompressed bytes of ``path`` (already checked by :func:`read_idx`)."""
    raw = path.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw
    return hashlib.sha256(data).hexdigest()


def download(
    dataset: str,
    dest: Path,
    *,
    mirrors: list[str] | None = None,
    specs: Mapping[str, DatasetSpec] | None = None,
    timeout: float = 30,
) -> Path:
    """Download the 4 files of ``dataset`` into the folder ``dest`` (created if needed); return ``dest``.

    Tries ``mirrors`` (default: the spec's) in order, falling back on network/HTTP errors. Files
    already in ``dest`` that verify are skipped. ``specs`` replaces the registry :data:`DATASETS`.
    A checksum mismatch raises DataError naming the file and both hashes, leaving nothing behind.
    """
    spec = get_spec(dataset, specs)
    if spec.corpus is not None:
        raise DataError(
            f"{dataset} is built from the installed {spec.corpus.package} package: nothing to download"
        )
    urls = list(spec.mirrors if mirrors is None else mirrors)
    if not urls:
        raise DataError(f"no download mirrors are known for {dataset}; pass one with --mirror URL")
    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create download folder {dest} ({exc.strerror or exc}); choose a writable folder"
        ) from None
    if spec.layout is not None:  # one archive (CIFAR), verified and extracted
        return download_archive(spec.name, spec.layout, dest, urls, timeout)
    for role in ROLES:
        existing = resolve_file(dest, spec.files[role])
        if existing is not None and _is_verified(existing, spec.payload_sha256.get(role)):
            continue
        _download_one(spec, role, dest, urls, timeout)
    return dest
