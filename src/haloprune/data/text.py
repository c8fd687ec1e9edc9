"""Byte-level text corpora: a package's Python sources as one byte string, built deterministically,
verified by sha256, cut into contiguous parts and windows of bytes.

The corpus of a :class:`ByteCorpus` is every ``*.py`` file under the installed package's folder, sorted by
its path relative to that folder (``/``-separated, compared as strings), each preceded by the line
``# ==> <relative path> <==`` and followed by a newline if it does not end with one. A pinned package
version has the same files on every machine, so its corpus has one sha256, kept in the spec: a corpus
with another digest (another version of the package) is refused, since its numbers would not be
comparable with the recorded ones. The corpus is built once per process.

The corpus is cut **by bytes, contiguously**: the first ``fractions[0]`` for training, the next
``fractions[1]`` for validation, the rest for testing, so no byte is in two parts (a window straddling a
boundary does not exist). Each part is cut into non-overlapping windows of ``context + 1`` bytes: the
input is the first ``context`` bytes, the targets the ``context`` bytes after each position (a language
model's next-byte targets, shifted by one).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from haloprune.core.errors import DataError

__all__ = ["PARTS", "ByteCorpus", "build_corpus", "corpus_bytes", "load_corpus", "package_root", "windows"]

PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class ByteCorpus:
    """A byte-level corpus: the Python sources of the installed ``package`` (see the module doc), whose
    ``version`` gives the corpus ``sha256``; how it is cut; its default window length."""

    package: str  # an importable package, e.g. "torch"
    version: str  # the pinned version whose corpus has sha256
    sha256: str
    fractions: tuple[float, float] = (0.9, 0.05)  # train, validation; the rest is the test part
    context: int = 128  # bytes a window gives the model (data.context's default)


def package_root(package: str) -> Path:
    """The folder of the installed ``package`` (whose ``*.py`` files are its corpus)."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise DataError(f"the corpus of {package} needs {package} installed; it is not") from None
    if module.__file__ is None:
        raise DataError(f"{package} is not a package with a folder of its own (a namespace package)")
    return Path(module.__file__).parent


def build_corpus(root: Path) -> bytes:
    """The corpus of the ``*.py`` files under ``root`` (see the module doc): the same bytes for the same
    files, whatever the file system's order."""
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py") if p.is_file())
    parts = []
    for rel, path in files:
        body = path.read_bytes()
        parts += [f"# ==> {rel} <==\n".encode(), body]
        if body and not body.endswith(b"\n"):
            parts.append(b"\n")
    return b"".join(parts)


@functools.lru_cache(maxsize=2)
def _built(root: str) -> tuple[torch.Tensor, str]:
    data = build_corpus(Path(root))
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), hashlib.sha256(data).hexdigest()


def corpus_bytes(corpus: ByteCorpus, name: str, verify: bool = True) -> tuple[torch.Tensor, str]:
    """The corpus as a uint8 tensor (shared: do not write to it) and its sha256, which must be the spec's
    (a :class:`DataError` naming both digests otherwise) unless not ``verify``."""
    root = package_root(corpus.package)
    data, digest = _built(str(root))
    if verify and digest != corpus.sha256:
        installed = getattr(importlib.import_module(corpus.package), "__version__", "unknown")
        raise DataError(
            f"the {name} corpus built from {root} ({corpus.package} {installed}) has sha256 {digest}, "
            f"not {corpus.sha256} ({corpus.package} {corpus.version}'s): results would not compare; "
            f"install {corpus.package}=={corpus.version}"
        )
    return data, digest


def windows(part: torch.Tensor, context: int) -> torch.Tensor:
    """``part`` cut into its non-overlapping windows of ``context + 1`` bytes, ``(n, context + 1)`` (a
    view; the bytes after the last whole window are left out)."""
    n = len(part) // (context + 1)
    return part[: n * (context + 1)].view(n, context + 1)


def _bounds(n: int, fractions: tuple[float, float]) -> dict[str, tuple[int, int]]:
    train_end = round(n * fractions[0])
    val_end = train_end + round(n * fractions[1])
    return {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}


def _evenly(n: int, k: int) -> torch.Tensor:
    """``k`` of ``range(n)`` spread evenly over it (the first at 0), ``k <= n``: distinct, ascending."""
    return torch.arange(k) * n // k


def load_corpus(
    corpus: ByteCorpus,
    name: str,
    *,
    context: int,
    val_size: int,
    seed: int,
    train_subset: int | None,
    test_subset: int | None,
    verify: bool = True,
) -> tuple[dict[str, torch.Tensor], str]:
    """The windows of each part as int64 inputs ``x_<part>`` ``(n, context)`` and next-byte targets
    ``y_<part>``, and ``train_indices`` / ``val_indices`` (the windows used, numbered within their part);
    and the corpus's sha256 (checked against ``corpus.sha256`` if ``verify``).

    ``val_size``: windows of the validation part, spread evenly over it (0: none); ``train_subset``:
    training windows drawn at random (seeded by ``seed``; None: all of them); ``test_subset``: test
    windows spread evenly over the test part (None: all). Validation and test windows are the same for
    every seed. A count beyond what the part holds is a :class:`DataError`.
    """
    if context < 1:
        raise DataError(f"context={context} is out of range: a window needs at least 1 byte of context")
    data, digest = corpus_bytes(corpus, name, verify)
    cut = {part: windows(data[a:b], context) for part, (a, b) in _bounds(len(data), corpus.fractions).items()}
    n = {part: len(w) for part, w in cut.items()}
    unit = f"windows of {context + 1} bytes"
    if not 0 <= val_size <= n["val"]:
        raise DataError(
            f"val_size={val_size} is out of range: {name}'s validation part has {n['val']} {unit}, "
            f"so use 0..{n['val']}"
        )
    for what, count, part in (("train_subset", train_subset, "train"), ("test_subset", test_subset, "test")):
        if count is not None and not 0 < count <= n[part]:
            raise DataError(
                f"{what}={count} is out of range: {name}'s {part} part has {n[part]} {unit}, "
                f"so use 1..{n[part]} (or none)"
            )
    generator = torch.Generator().manual_seed(seed)
    train_idx = torch.arange(n["train"])
    if train_subset is not None:
        train_idx = torch.randperm(n["train"], generator=generator)[:train_subset].sort().values
    chosen = {
        "train": train_idx,
        "val": _evenly(n["val"], val_size),
        "test": _evenly(n["test"], n["test"] if test_subset is None else test_subset),
    }
    out: dict[str, torch.Tensor] = {}
    for part in PARTS:
        w = cut[part][chosen[part]].long()  # a copy of the chosen windows only
        out[f"x_{part}"], out[f"y_{part}"] = w[:, :-1], w[:, 1:]
    out["train_indices"], out["val_indices"] = chosen["train"], chosen["val"]
    return out, digest
