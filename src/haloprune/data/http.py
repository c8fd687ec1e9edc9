"""HTTP(S) downloads with mirrors: stream a URL to a file while hashing it, try mirrors in turn.

The one place that talks to the network; dataset-specific checks (IDX files, archives) sit on top of it.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import TypeVar

from haloprune.core.errors import DataError

_CHUNK = 1 << 16
_USER_AGENT = "haloprune-downloader/1"
RETRY = "nothing was saved; retry later or try another mirror"


class MirrorFailed(Exception):
    """A mirror could not deliver a file (network error, HTTP error, short read)."""


def fetch(url: str, out, timeout: float) -> str:
    """Stream ``url`` into the open binary file ``out``; return the sha256 of the bytes."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise MirrorFailed(f"unsupported URL scheme {scheme!r}")
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
                raise MirrorFailed(f"short read: got {received} of {length} bytes")
    except urllib.error.HTTPError as exc:
        raise MirrorFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise MirrorFailed(str(exc.reason)) from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, IncompleteRead
        raise MirrorFailed(str(exc) or type(exc).__name__) from None
    return digest.hexdigest()


T = TypeVar("T")


def try_mirrors(
    name: str, dataset: str, mirrors: Sequence[str], attempt: Callable[[str], T], do_it_yourself: str
) -> T:
    """``attempt(url)`` for ``name`` on each mirror in turn until one succeeds; a mirror that cannot deliver
    (``MirrorFailed``) is noted and the next one tried. ``attempt`` verifies what it fetched and leaves
    nothing behind on failure; a verification failure (``DataError``) ends the download at once."""
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + urllib.parse.quote(name)
        try:
            return attempt(url)
        except MirrorFailed as exc:
            failures.append(f"{url}: {exc}")
    raise DataError(
        f"could not download {name} for {dataset} from any mirror ({'; '.join(failures)}); "
        f"check your network or proxy, or {do_it_yourself} and pass --data-dir"
    )
