"""The IDX downloader (haloprune.data.download) against a local HTTP server: checksums, mirrors, errors."""

from __future__ import annotations

import gzip
import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest

from haloprune.core.errors import DataError
from haloprune.data import (
    DatasetSpec,
    download,
    load_dataset,
)
from haloprune.data.idx import idx_bytes
from tests.helpers import FMNIST_FILES, one_line, tiny_arrays, write_dataset


def _tiny_spec(name: str, arrays: dict[str, np.ndarray], mirrors: tuple[str, ...] = ()) -> DatasetSpec:
    payload = {role: hashlib.sha256(idx_bytes(a)).hexdigest() for role, a in arrays.items()}
    archive = {
        role: hashlib.sha256(gzip.compress(idx_bytes(a), mtime=0)).hexdigest() for role, a in arrays.items()
    }
    return DatasetSpec(
        name=name,
        files=dict(FMNIST_FILES),
        payload_sha256=payload,
        archive_sha256=archive,
        mirrors=mirrors,
        class_names=tuple(str(i) for i in range(10)),
        mean=0.5,
        std=0.25,
    )


@pytest.fixture
def server(tmp_path: Path, serve_dir):
    """Serve a folder of small gz IDX files on 127.0.0.1; returns (base_url, arrays)."""
    root = tmp_path / "www"
    arrays = tiny_arrays(n_train=12, n_test=6, seed=2)
    write_dataset(root, arrays)
    return serve_dir(root), arrays


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_success_and_skip(server, tmp_path: Path) -> None:
    url, arrays = server
    spec = _tiny_spec("tiny", arrays, mirrors=(url,))
    dest = tmp_path / "dest"
    assert download("tiny", dest, specs={"tiny": spec}, timeout=5) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{f}.gz" for f in FMNIST_FILES.values())
    data = load_dataset("tiny", dest, specs={"tiny": spec}, val_size=2)  # verify=True passes
    assert len(data.x_train) == 10 and len(data.x_test) == 6
    # Second call: everything verified and skipped, so even a dead mirror is fine.
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    download("tiny", dest, specs={"tiny": spec}, mirrors=[_dead_url()], timeout=5)
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path: Path) -> None:
    url, arrays = server
    spec = _tiny_spec("tiny", arrays, mirrors=(url,))
    bad = DatasetSpec(
        name="tiny",
        files=spec.files,
        payload_sha256={**spec.payload_sha256, "train_images": "ab" * 32},
        mirrors=(url,),
    )
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as exc:
        download("tiny", dest, specs={"tiny": bad}, timeout=5)
    msg = one_line(exc)
    assert (
        "train-images-idx3-ubyte.gz" in msg
        and "ab" * 32 in msg
        and spec.payload_sha256["train_images"] in msg
    )
    assert list(dest.iterdir()) == []  # neither the final file nor a temp file
    archive_bad = DatasetSpec(
        name="tiny",
        files=spec.files,
        payload_sha256=spec.payload_sha256,
        archive_sha256={"train_images": "cd" * 32},
        mirrors=(url,),
    )
    with pytest.raises(DataError, match="archive sha256"):
        download("tiny", dest, specs={"tiny": archive_bad}, timeout=5)
    assert list(dest.iterdir()) == []


def test_download_falls_back_to_second_mirror(server, tmp_path: Path) -> None:
    url, arrays = server
    spec = _tiny_spec("tiny", arrays, mirrors=(_dead_url(), url))
    dest = download("tiny", tmp_path / "dest", specs={"tiny": spec}, timeout=5)
    assert len(list(dest.iterdir())) == 4


def test_download_404(server, tmp_path: Path) -> None:
    url, arrays = server
    spec = _tiny_spec("tiny", arrays, mirrors=(url,))
    missing = DatasetSpec(
        name="tiny",
        files={**spec.files, "test_labels": "no-such-file"},
        payload_sha256=spec.payload_sha256,
        mirrors=(url,),
    )
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as exc:
        download("tiny", dest, specs={"tiny": missing}, timeout=5)
    msg = one_line(exc)
    assert "no-such-file.gz" in msg and "404" in msg
    assert not any(p.name.startswith(".") for p in dest.iterdir())


def test_download_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="known datasets"):
        download("nope", tmp_path)
    assert list(tmp_path.iterdir()) == []
