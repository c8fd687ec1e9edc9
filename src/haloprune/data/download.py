"""Download a dataset's 4 IDX archives with mirror fallback and checksum verification.

Each file is streamed to a hidden temporary file inside ``dest``, verified (sha256 of the
decompressed IDX payload, and of the archive when known) and only then renamed into place with
:func:`os.replace`, so ``dest`` never holds a partial or unverified file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from haloprune.data.datasets import ROLES, DatasetSpec, get_spec, resolve_file
from haloprune.data.idx import GZIP_MAGIC, read_idx
from haloprune.errors import DataError

__all__ = ["download"]

_CHUNK = 1 << 16
_USER_AGENT = "haloprune-downloader/1"
_RETRY = "nothing was saved; retry later or try another mirror"


class _MirrorFailed(Exception):
    """A mirror could not deliver a file (network error, HTTP error, short read)."""


def _is_verified(path: Path, payload_sha256: str | None) -> bool:
    try:
        read_idx(path, payload_sha256)
    except DataError:
        return False
    return True


def _fetch(url: str, out, timeout: float) -> str:
    """Stream ``url`` into the open binary file ``out``; return the sha256 of the bytes."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise _MirrorFailed(f"unsupported URL scheme {scheme!r}")
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
            if length is not None and length.isdigit() and received != int(length):
                raise _MirrorFailed(f"short read: got {received} of {length} bytes")
    except urllib.error.HTTPError as exc:
        raise _MirrorFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _MirrorFailed(str(exc.reason)) from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, IncompleteRead
        raise _MirrorFailed(str(exc) or type(exc).__name__) from None
    return digest.hexdigest()


T = TypeVar("T")


def try_mirrors(
    name: str, dataset: str, mirrors: Sequence[str], attempt: Callable[[str], T], do_it_yourself: str
) -> T:
    """``attempt(url)`` for ``name`` on each mirror in turn until one succeeds; a mirror that cannot deliver
    (``_MirrorFailed``) is noted and the next one tried. ``attempt`` verifies what it fetched and leaves
    nothing behind on failure; a verification failure (``DataError``) ends the download at once."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + urllib.parse.quote(name)
        try:
            return attempt(url)
        except _MirrorFailed as exc:
            failures.append(f"{url}: {exc}")
    raise DataError(
        f"could not download {name} for {dataset} from any mirror ({'; '.join(failures)}); "
        f"check your network or proxy, or {do_it_yourself} and pass --data-dir"
    )


def _download_one(spec: DatasetSpec, role: str, dest: Path, mirrors: Sequence[str], timeout: float) -> Path:
    fname = spec.files[role]
    archive = f"{fname}.gz"
    target = dest / archive
    payload_sha = spec.payload_sha256.get(role)
    archive_sha = (spec.archive_sha256 or {}).get(role)

    def attempt(url: str) -> Path:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{archive}.", suffix=".part", dir=dest)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                got_archive_sha = _fetch(url, out, timeout)
            try:
                read_idx(tmp)
            except DataError as exc:
                problem = str(exc).split("; ", 1)[0].replace(f"{tmp.name} in {dest}", archive)
                raise DataError(f"{problem} (downloaded from {url}); {_RETRY}") from None
            actual = _payload_sha(tmp)
            if payload_sha is not None and actual != payload_sha:
                raise DataError(
                    f"{archive} from {url} failed its checksum: expected payload sha256 {payload_sha}, "
                    f"got {actual}; {_RETRY}"
                )
            if archive_sha is not None and got_archive_sha != archive_sha:
                raise DataError(
                    f"{archive} from {url} failed its checksum: expected archive sha256 {archive_sha}, "
                    f"got {got_archive_sha}; {_RETRY}"
                )
            os.replace(tmp, target)
            return target
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

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
        from haloprune.data.cifar import download_archive

        return download_archive(spec, dest, urls, timeout)
    for role in ROLES:
        existing = resolve_file(dest, spec.files[role])
        if existing is not None and _is_verified(existing, spec.payload_sha256.get(role)):
            continue
        _download_one(spec, role, dest, urls, timeout)
    return dest
