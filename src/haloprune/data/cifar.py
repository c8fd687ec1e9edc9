"""CIFAR-10 / CIFAR-100 in the official python format: pickled dicts inside a ``.tar.gz``.

Layout (https://www.cs.toronto.edu/~kriz/cifar.html): ``cifar-10-batches-py/`` holds ``data_batch_1`` ..
``data_batch_5``, ``test_batch`` and ``batches.meta``; ``cifar-100-python/`` holds ``train``, ``test`` and
``meta``. Each data file is a dict with ``b"data"`` (uint8, N x 3072: 1024 red, 1024 green, 1024 blue
values, rows top to bottom) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` / ``b"coarse_labels"``
(CIFAR-100; the 100 fine labels are used).

The files are pickles, and unpickling can run arbitrary code. :class:`_CifarUnpickler` therefore resolves
only the few globals the format needs (numpy's array reconstruction and dtype, and latin-1 byte decoding
from Python-3-written pickles); any other global, as a crafted file would need, is refused with a
:class:`~haloprune.core.errors.DataError`.

The archive is downloaded with mirror fallback, checked (size-independent: md5 as published on the CIFAR
page, and sha256) and extracted with :func:`~haloprune.data.archive.safe_extract` into a temporary folder
that is renamed into place only when complete, so the destination never holds a partial dataset.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import hashlib
import io
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]

from haloprune.core.errors import DataError
from haloprune.data.archive import safe_extract
from haloprune.data.http import RETRY, fetch, try_mirrors

__all__ = ["PickleLayout", "download_archive", "missing_files", "read_arrays", "safe_unpickle"]


@dataclass(frozen=True)
class PickleLayout:
    """Where a python-format CIFAR dataset keeps its files, and how to check its archive."""

    folder: str  # the archive's top folder, e.g. "cifar-10-batches-py"
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes  # b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100)
    names_key: bytes  # class names in the meta file
    archive: str  # file name on the mirrors, e.g. "cifar-10-python.tar.gz"
    archive_md5: str
    archive_sha256: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes; latin-1 only."""
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # written by numpy 1.x / 2.x
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, strings, numbers and numpy arrays."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def safe_unpickle(data: bytes, where: str) -> Any:
    """Unpickle ``data`` (keys and strings stay bytes, as the official files were written by Python 2),
    allowing only what the CIFAR format needs; anything else raises DataError naming ``where``."""
    try:
        return _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{where} is not a CIFAR python file ({err}); it was not loaded") from None
    except Exception as err:  # truncated or garbled: EOFError, ValueError, TypeError, ...
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{where} is not a readable CIFAR python file ({detail})") from None


def data_root(folder: Path, layout: PickleLayout) -> Path:
    """``folder/<layout.folder>`` when the files are there (the extracted archive), else ``folder``."""
    inner = folder / layout.folder
    return inner if inner.is_dir() else folder


def missing_files(folder: Path, layout: PickleLayout) -> list[str]:
    """The layout's files that ``folder`` (or its archive subfolder) lacks."""
    root = data_root(folder, layout)
    return [f for f in layout.files if not (root / f).is_file()]


def _read_batch(path: Path, layout: PickleLayout, hint: str) -> tuple[np.ndarray, np.ndarray]:
    where = f"{path.name} in {path.parent}"
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{where} cannot be read ({err.strerror or err}); {hint}") from None
    obj = safe_unpickle(raw, where)
    if not isinstance(obj, dict) or b"data" not in obj or layout.label_key not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{where} lacks b'data' / {layout.label_key!r} (found {keys}); is it the right dataset? {hint}"
        )
    data, labels = obj[b"data"], obj[layout.label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{where}: b'data' must be a uint8 array of shape (N, 3072), got {shape}; {hint}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {layout.label_key!r} is not a list of integers; {hint}") from None
    if labels.shape != (len(data),):
        raise DataError(
            f"{where}: {len(data)} images but {labels.size} labels in {layout.label_key!r}; {hint}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(path: Path, layout: PickleLayout, hint: str) -> tuple[str, ...]:
    meta = safe_unpickle(path.read_bytes(), f"{path.name} in {path.parent}")
    names = meta.get(layout.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list):
        raise DataError(f"{path.name} in {path.parent} lacks the class names {layout.names_key!r}; {hint}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


@functools.lru_cache(maxsize=4)
def _read_cached(folder: str, layout: PickleLayout, stamp: tuple[tuple[int, int], ...], hint: str):
    # the files' (mtime, size) are part of the key, so a replaced file is read again
    root = Path(folder)
    parts = {
        split: [_read_batch(root / f, layout, hint) for f in files]
        for split, files in (("train", layout.train), ("test", layout.test))
    }
    names = _class_names(root / layout.meta, layout, hint)
    arrays = {}
    for split, batches in parts.items():
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        images.flags.writeable = labels.flags.writeable = False  # shared by every caller
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays, names


def read_arrays(folder: Path, layout: PickleLayout, num_classes: int, hint: str) -> dict[str, np.ndarray]:
    """The four arrays (``train_images`` (N, 3, 32, 32) uint8, ``train_labels``, ``test_*``) of the
    dataset in ``folder``; checks the class count against the meta file."""
    root = data_root(folder, layout)
    try:
        stamp = tuple((st.st_mtime_ns, st.st_size) for st in (os.stat(root / f) for f in layout.files))
    except OSError as err:
        raise DataError(f"{root} lacks {Path(err.filename or '').name}; {hint}") from None
    arrays, names = _read_cached(str(root.resolve()), layout, stamp, hint)
    if len(names) != num_classes:
        raise DataError(
            f"{layout.meta} in {root} names {len(names)} classes, expected {num_classes}; "
            f"is it the right dataset? {hint}"
        )
    return dict(arrays)


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def download_archive(
    name: str, layout: PickleLayout, dest: Path, mirrors: Sequence[str], timeout: float
) -> Path:
    """Download dataset ``name``'s archive (``layout.archive``) into ``dest`` (trying ``mirrors`` in turn),
    verify md5 and sha256, extract it safely and move its folder into place; returns ``dest``. Nothing is
    left on failure."""
    if not missing_files(dest, layout):
        return dest

    def attempt(url: str) -> Path:
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=dest))
        try:
            archive = work / layout.archive
            with archive.open("wb") as out:
                fetch(url, out, timeout)
            md5, sha = _digests(archive)
            if md5 != layout.archive_md5 or (layout.archive_sha256 and sha != layout.archive_sha256):
                want = f"md5 {layout.archive_md5}" + (
                    f", sha256 {layout.archive_sha256}" if layout.archive_sha256 else ""
                )
                raise DataError(
                    f"{layout.archive} from {url} failed its checksum: expected {want}, "
                    f"got md5 {md5}, sha256 {sha}; {RETRY}"
                )
            safe_extract(archive, work / "x", None)  # verified above
            extracted = work / "x" / layout.folder
            lacking = missing_files(extracted, layout) if extracted.is_dir() else list(layout.files)
            if lacking:
                raise DataError(f"{layout.archive} from {url} lacks {', '.join(lacking)}; {RETRY}")
            target = dest / layout.folder
            if target.exists():  # an incomplete earlier copy: replaced by the verified one
                shutil.rmtree(target)
            os.replace(extracted, target)
            return dest
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)

    return try_mirrors(layout.archive, name, mirrors, attempt, "extract the archive yourself")
