"""Tests for haloprune.data: IDX parsing, discovery, loading/splits, batching and the downloader."""

from __future__ import annotations

import gzip
import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from haloprune.core.errors import DataError, HaloPruneError
from haloprune.data import (
    DATASETS,
    DatasetSpec,
    download,
    find_data_dir,
    iterate_batches,
    load_dataset,
    read_idx,
    write_idx,
)
from haloprune.data import datasets as ds_mod
from haloprune.data.idx import idx_bytes

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = dict(DATASETS["fashion-mnist"].files)


def _one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert isinstance(exc.value, HaloPruneError)
    return msg


def _tiny_arrays(n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }


def _write_dataset(folder: Path, arrays: dict[str, np.ndarray] | None = None, *, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _tiny_arrays() if arrays is None else arrays
    for role, arr in arrays.items():
        write_idx(folder / (FILES[role] + (".gz" if gz else "")), arr, gzip=gz)
    return folder


def _tiny_spec(name: str, arrays: dict[str, np.ndarray], mirrors: tuple[str, ...] = ()) -> DatasetSpec:
    payload = {role: hashlib.sha256(idx_bytes(a)).hexdigest() for role, a in arrays.items()}
    archive = {
        role: hashlib.sha256(gzip.compress(idx_bytes(a), mtime=0)).hexdigest() for role, a in arrays.items()
    }
    return DatasetSpec(
        name=name,
        files=dict(FILES),
        payload_sha256=payload,
        archive_sha256=archive,
        mirrors=mirrors,
        class_names=tuple(str(i) for i in range(10)),
        mean=0.5,
        std=0.25,
    )


# --------------------------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x.idx", arr, gzip=gz)  # suffix says nothing: gzip is sniffed
    out = read_idx(path, hashlib.sha256(idx_bytes(arr)).hexdigest())
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable


def test_read_idx_truncated(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data[:1000]))
    with pytest.raises(DataError) as exc:
        read_idx(path)
    msg = _one_line(exc)
    assert "train-images-idx3-ubyte.gz" in msg and "truncated" in msg and "7840" in msg


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "h"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)) + b"xyz")
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert "3 trailing bytes" in _one_line(exc)


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (b"\x12\x34\x08\x01", "not an IDX file"),
        (b"\x00\x00\x0d\x01", "only unsigned byte"),
        (b"\x00\x00\x42\x01", "unknown"),
    ],
)
def test_read_idx_bad_magic(tmp_path: Path, header: bytes, needle: str) -> None:
    path = tmp_path / "m"
    path.write_bytes(header + (4).to_bytes(4, "big") + b"\x00" * 4)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert needle in _one_line(exc)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)), mtime=0)
    bad = bytearray(good)
    bad[20:30] = b"\xff" * 10  # garbage in the deflate stream
    cut = good[: len(good) // 2]  # gzip stream ends early
    for i, blob in enumerate([bytes(bad), cut, b"\x1f\x8b" + b"junk"]):
        path = tmp_path / f"c{i}.gz"
        path.write_bytes(blob)
        with pytest.raises(DataError) as exc:
            read_idx(path)
        assert path.name in _one_line(exc)


def test_read_idx_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        read_idx(tmp_path / "empty")


def test_read_idx_sha_mismatch(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "s.gz", np.ones(7, dtype=np.uint8), gzip=True)
    with pytest.raises(DataError) as exc:
        read_idx(path, "0" * 64)
    msg = _one_line(exc)
    assert "0" * 64 in msg and hashlib.sha256(idx_bytes(np.ones(7, dtype=np.uint8))).hexdigest() in msg


# ------------------------------------------------------------------------------------------- real data


def test_real_fashion_mnist() -> None:
    if not all((DEBIAN_FMNIST / f"{name}.gz").is_file() for name in FILES.values()):
        pytest.skip(f"Debian Fashion-MNIST not installed in {DEBIAN_FMNIST}")
    data = load_dataset("fashion-mnist", DEBIAN_FMNIST, verify=True)
    assert data.x_train.shape == (55000, 1, 28, 28) and data.x_train.dtype == torch.float32
    assert data.x_val.shape == (5000, 1, 28, 28)
    assert data.x_test.shape == (10000, 1, 28, 28)
    assert data.y_train.dtype == torch.int64
    for y in (data.y_train, data.y_val, data.y_test):
        assert int(y.min()) == 0 and int(y.max()) == 9
    full = torch.cat([data.x_train, data.x_val])
    assert abs(float(full.mean())) < 0.01
    assert abs(float(full.std()) - 1.0) < 0.01


# ------------------------------------------------------------------------------------- splits & loading


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "tiny")


def test_split_deterministic_and_disjoint(tiny_dir: Path) -> None:
    a = load_dataset("fashion-mnist", tiny_dir, val_size=15, seed=3, verify=False)
    b = load_dataset("fashion-mnist", tiny_dir, val_size=15, seed=3, verify=False)
    c = load_dataset("fashion-mnist", tiny_dir, val_size=15, seed=4, verify=False)
    assert a.x_train.shape == (45, 1, 28, 28) and a.x_val.shape == (15, 1, 28, 28)
    assert a.x_test.shape == (20, 1, 28, 28)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.val_indices, c.val_indices)
    assert set(a.train_indices.tolist()).isdisjoint(a.val_indices.tolist())
    assert sorted(a.train_indices.tolist() + a.val_indices.tolist()) == list(range(60))
    # Disjoint by pixel rows too (random 28x28 images are unique), and rows match the indices.
    train_rows = {row.numpy().tobytes() for row in a.x_train}
    assert not train_rows & {row.numpy().tobytes() for row in a.x_val}
    raw = _tiny_arrays()
    expect = (raw["train_images"][a.val_indices.numpy()].astype(np.float32) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(a.x_val[:, 0].numpy(), expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.y_val.numpy(), raw["train_labels"][a.val_indices.numpy()])


def test_subsets_and_empty_val(tiny_dir: Path) -> None:
    full = load_dataset("fashion-mnist", tiny_dir, val_size=10, seed=1, verify=False)
    sub = load_dataset(
        "fashion-mnist", tiny_dir, val_size=10, seed=1, train_subset=7, test_subset=5, verify=False
    )
    assert torch.equal(sub.val_indices, full.val_indices)  # val split does not depend on the subset
    assert len(sub.x_train) == 7 and set(sub.train_indices.tolist()) <= set(full.train_indices.tolist())
    assert torch.equal(sub.x_test, full.x_test[:5])
    empty = load_dataset("fashion-mnist", tiny_dir, val_size=0, verify=False)
    assert empty.x_val.shape == (0, 1, 28, 28) and empty.y_val.shape == (0,) and len(empty.x_train) == 60
    with pytest.raises(DataError, match="val_size"):
        load_dataset("fashion-mnist", tiny_dir, val_size=60, verify=False)
    with pytest.raises(DataError, match="train_subset"):
        load_dataset("fashion-mnist", tiny_dir, val_size=10, train_subset=51, verify=False)


def test_load_verify_default_rejects_custom_data(tiny_dir: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_dataset("fashion-mnist", tiny_dir)
    msg = _one_line(exc)
    assert "checksum" in msg and "verify=False" in msg and str(tiny_dir) in msg


def test_load_raw_files_and_gz_preferred(tmp_path: Path) -> None:
    raw_dir = _write_dataset(tmp_path / "raw", gz=False)
    data = load_dataset("fashion-mnist", raw_dir, val_size=0, verify=False)
    assert len(data.x_train) == 60
    # .gz wins over the raw file when both exist.
    _write_dataset(raw_dir, _tiny_arrays(n_train=30, n_test=10, seed=9), gz=True)
    assert len(load_dataset("fashion-mnist", raw_dir, val_size=0, verify=False).x_train) == 30


def test_load_count_and_label_checks(tmp_path: Path) -> None:
    arrays = _tiny_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    with pytest.raises(DataError, match="59 labels"):
        load_dataset("fashion-mnist", _write_dataset(tmp_path / "a", arrays), verify=False, val_size=0)
    arrays = _tiny_arrays()
    arrays["test_labels"][0] = 10
    with pytest.raises(DataError, match="go up to 10"):
        load_dataset("fashion-mnist", _write_dataset(tmp_path / "b", arrays), verify=False, val_size=0)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError) as exc:
        load_dataset("cifar-11")
    msg = _one_line(exc)
    assert "fashion-mnist" in msg and "mnist" in msg


def test_cached_read_sees_file_changes(tmp_path: Path) -> None:
    folder = _write_dataset(tmp_path / "d")
    assert len(load_dataset("fashion-mnist", folder, val_size=0, verify=False).x_train) == 60
    _write_dataset(folder, _tiny_arrays(n_train=40, seed=5))
    assert len(load_dataset("fashion-mnist", folder, val_size=0, verify=False).x_train) == 40


# ----------------------------------------------------------------------------------------- find_data_dir


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    system = _write_dataset(tmp_path / "system")
    monkeypatch.setattr(ds_mod, "SYSTEM_DATA_DIRS", {"fashion-mnist": system})
    monkeypatch.setattr(ds_mod, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("HALOPRUNE_DATA", raising=False)
    return {
        "system": system,
        "env": _write_dataset(tmp_path / "env" / "fashion-mnist"),
        "explicit": _write_dataset(tmp_path / "explicit"),
        "cache": tmp_path / "cache" / "fashion-mnist",
    }


def test_find_data_dir_precedence(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_data_dir("fashion-mnist", None) == places["system"]
    monkeypatch.setenv("HALOPRUNE_DATA", str(places["env"].parent))  # <env>/fashion-mnist subfolder
    assert find_data_dir("fashion-mnist", None) == places["env"]
    monkeypatch.setenv("HALOPRUNE_DATA", str(places["env"]))  # the folder itself
    assert find_data_dir("fashion-mnist", None) == places["env"]
    assert find_data_dir("fashion-mnist", places["explicit"]) == places["explicit"]
    assert find_data_dir("fashion-mnist", str(places["explicit"])) == places["explicit"]


def test_find_data_dir_cache_and_errors(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ds_mod, "SYSTEM_DATA_DIRS", {"fashion-mnist": tmp_path / "absent"})
    monkeypatch.setenv("HALOPRUNE_DATA", str(tmp_path / "empty-env"))
    with pytest.raises(DataError) as exc:
        find_data_dir("fashion-mnist", None)
    msg = _one_line(exc)
    for needle in ("empty-env", "absent", "cache", "apt-get install dataset-fashion-mnist", "--data-dir"):
        assert needle in msg
    assert "haloprune data download fashion-mnist" in msg
    _write_dataset(places["cache"])
    assert find_data_dir("fashion-mnist", None) == places["cache"]
    # An explicit folder that lacks the files is an error, not a silent fallback.
    (tmp_path / "half").mkdir()
    write_idx(tmp_path / "half" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8), gzip=True)
    with pytest.raises(DataError) as exc:
        find_data_dir("fashion-mnist", tmp_path / "half")
    assert "t10k-labels-idx1-ubyte" in _one_line(exc)
    with pytest.raises(DataError, match="does not exist"):
        find_data_dir("fashion-mnist", tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------- batching


def test_iterate_batches() -> None:
    x = torch.arange(10).float().view(10, 1)
    y = torch.arange(10)
    plain = list(iterate_batches(x, y, 4, shuffle=False, generator=None))
    assert [len(b[1]) for b in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in plain]), y)
    dropped = list(iterate_batches(x, y, 4, shuffle=False, generator=None, drop_last=True))
    assert [len(b[1]) for b in dropped] == [4, 4]
    runs = [
        list(iterate_batches(x, y, 3, shuffle=True, generator=torch.Generator().manual_seed(7)))
        for _ in range(2)
    ]
    order = torch.cat([yb for _, yb in runs[0]])
    assert torch.equal(order, torch.cat([yb for _, yb in runs[1]]))
    assert sorted(order.tolist()) == list(range(10)) and not torch.equal(order, y)
    for xb, yb in runs[0]:
        assert torch.equal(xb[:, 0].long(), yb)
    with pytest.raises(ValueError):
        list(iterate_batches(x, y, 0, shuffle=False, generator=None))


# ----------------------------------------------------------------------------------------- downloader


@pytest.fixture
def server(tmp_path: Path, serve_dir):
    """Serve a folder of small gz IDX files on 127.0.0.1; returns (base_url, arrays)."""
    root = tmp_path / "www"
    arrays = _tiny_arrays(n_train=12, n_test=6, seed=2)
    _write_dataset(root, arrays)
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
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{f}.gz" for f in FILES.values())
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
    msg = _one_line(exc)
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
    msg = _one_line(exc)
    assert "no-such-file.gz" in msg and "404" in msg
    assert not any(p.name.startswith(".") for p in dest.iterdir())


def test_download_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="known datasets"):
        download("nope", tmp_path)
    assert list(tmp_path.iterdir()) == []
