"""CIFAR-10/100 in the official python format: reading, safe unpickling, download + verified extraction,
and the CLI's data commands. Archives are built here in the exact official layout (pickled dicts,
protocol 2, bytes keys) with 20 images per batch file, and served from 127.0.0.1."""

from __future__ import annotations

import ast
import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from haloprune.cli import main
from haloprune.core.errors import DataError
from haloprune.data import DATASETS, cifar, download, load_dataset
from haloprune.data.cifar import safe_unpickle

N = 20  # images per batch file


def _batch(rng: np.random.Generator, n: int, cifar100: bool) -> dict[bytes, object]:
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    if cifar100:
        return {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": b"training batch 1 of 1",
            b"fine_labels": rng.integers(0, 100, n).tolist(),
            b"coarse_labels": rng.integers(0, 20, n).tolist(),
            b"data": data,
        }
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar(root: Path, name: str, seed: int = 0) -> dict[str, bytes]:
    """Write ``name``'s official folder under ``root``; returns {file: pickle bytes}."""
    rng = np.random.default_rng(seed)
    layout = DATASETS[name].layout
    assert layout is not None
    c100 = name == "cifar100"
    files: dict[str, object] = {f: _batch(rng, N, c100) for f in (*layout.train, *layout.test)}
    if c100:
        files[layout.meta] = {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        }
    else:
        names = [n.encode() for n in DATASETS["cifar10"].class_names]
        files[layout.meta] = {b"num_cases_per_batch": N, b"label_names": names, b"num_vis": 3072}
    folder = root / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for fname, obj in files.items():
        out[fname] = pickle.dumps(obj, protocol=2)
        (folder / fname).write_bytes(out[fname])
    return out


def make_archive(src: Path, name: str, www: Path) -> Path:
    layout = DATASETS[name].layout
    www.mkdir(parents=True, exist_ok=True)
    archive = www / layout.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / layout.folder, arcname=layout.folder)
    return archive


def _digests(path: Path) -> tuple[str, str]:
    raw = path.read_bytes()
    return hashlib.md5(raw).hexdigest(), hashlib.sha256(raw).hexdigest()


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _spec_for(name: str, url: str, archive: Path):
    md5, sha = _digests(archive)
    spec = DATASETS[name]
    return replace(spec, mirrors=(url,), layout=replace(spec.layout, archive_md5=md5, archive_sha256=sha))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_read_official_layout(tmp_path: Path, name: str) -> None:
    files = write_cifar(tmp_path, name)
    layout = DATASETS[name].layout
    data = load_dataset(name, tmp_path, val_size=10)
    n_train = N * len(layout.train)
    assert data.x_train.shape == (n_train - 10, 3, 32, 32) and data.x_test.shape == (N, 3, 32, 32)
    # pixel (channel, row, col) of image 0 of the test batch is data[0, 1024 c + 32 r + col]
    raw = pickle.loads(files[layout.test[0]], encoding="bytes")
    spec = DATASETS[name]
    c, r, col = 2, 5, 7
    expected = (raw[b"data"][0, 1024 * c + 32 * r + col] / 255.0 - spec.mean[c]) / spec.std[c]
    assert data.x_test[0, c, r, col].item() == pytest.approx(expected, abs=1e-5)
    assert data.y_test.tolist() == raw[layout.label_key]
    # the folder itself (not its parent) works too
    again = load_dataset(name, tmp_path / layout.folder, val_size=10)
    assert torch.equal(again.x_train, data.x_train)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as exc:
        load_dataset("cifar10", tmp_path)
    assert "\n" not in str(exc.value)
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(DataError, match="not a readable CIFAR python file"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8)}, 2))
    with pytest.raises(DataError, match="b'labels'"):
        load_dataset("cifar10", tmp_path)
    # CIFAR-10 files where CIFAR-100 is expected: the meta file gives it away
    (tmp_path / "c100").mkdir()
    os.rename(folder, tmp_path / "c100" / "cifar-100-python")
    for f, g in (("data_batch_1", "train"), ("test_batch", "test"), ("batches.meta", "meta")):
        os.rename(tmp_path / "c100" / "cifar-100-python" / f, tmp_path / "c100" / "cifar-100-python" / g)
    layout = DATASETS["cifar100"].layout
    spec = replace(
        DATASETS["cifar100"], layout=replace(layout, label_key=b"labels", names_key=b"label_names")
    )
    with pytest.raises(DataError, match="names 10 classes, expected 100"):
        load_dataset("cifar100", tmp_path / "c100", specs={"cifar100": spec})


def test_crafted_pickle_cannot_run_code(tmp_path: Path) -> None:
    payload = pickle.dumps({b"data": _Boom(), b"labels": [0]}, protocol=2)
    with pytest.raises(DataError, match="refusing to load global"):
        safe_unpickle(payload, "evil")
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match=r"refusing to load global (posix|os|nt)\.system"):
        load_dataset("cifar10", tmp_path)
    # the bytes decoder Python 3 protocol-2 pickles use is allowed for latin-1 only
    sneaky = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataError, match="rot13"):
        safe_unpickle(sneaky, "sneaky")
    # and a plain numpy array round-trips
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(safe_unpickle(pickle.dumps(arr, protocol=2), "ok"), arr)


def test_download_verify_extract(tmp_path: Path, serve_dir) -> None:
    write_cifar(tmp_path / "src", "cifar100", seed=3)
    archive = make_archive(tmp_path / "src", "cifar100", tmp_path / "www")
    url = serve_dir(tmp_path / "www")
    spec = _spec_for("cifar100", url, archive)
    dest = tmp_path / "dest"
    assert download("cifar100", dest, specs={"cifar100": spec}, timeout=5) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-100-python"]  # no archive, no temp folder
    data = load_dataset("cifar100", dest, val_size=0)
    assert data.x_train.shape == (N, 3, 32, 32) and data.num_classes == 100
    # already there: nothing is fetched again
    download("cifar100", dest, specs={"cifar100": spec}, mirrors=["http://127.0.0.1:9/"], timeout=5)


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path, serve_dir) -> None:
    write_cifar(tmp_path / "src", "cifar10")
    archive = make_archive(tmp_path / "src", "cifar10", tmp_path / "www")
    url = serve_dir(tmp_path / "www")
    good = _spec_for("cifar10", url, archive)
    for layout in (
        replace(good.layout, archive_md5="0" * 32),
        replace(good.layout, archive_sha256="f" * 64),
    ):
        dest = tmp_path / "dest"
        with pytest.raises(DataError, match="failed its checksum") as exc:
            download("cifar10", dest, specs={"cifar10": replace(good, layout=layout)}, timeout=5)
        assert "\n" not in str(exc.value)
        assert list(dest.iterdir()) == []


def test_download_refuses_archive_escaping_its_folder(tmp_path: Path, serve_dir) -> None:
    www = tmp_path / "www"
    www.mkdir()
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    spec = _spec_for("cifar10", serve_dir(www), archive)
    with pytest.raises(DataError, match="outside"):
        download("cifar10", tmp_path / "a" / "dest", specs={"cifar10": spec}, timeout=5)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "a" / "escaped").exists()
    assert list((tmp_path / "a" / "dest").iterdir()) == []


def test_cli_data_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cifar(tmp_path, "cifar10")
    assert main(["data", "check", "cifar10", "--data-dir", str(tmp_path)]) == 0
    assert "100 training and 20 test images" in capsys.readouterr().out
    assert main(["data", "check", "cifar100", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cifar-100-python.tar.gz" in err


def test_the_cifar_reader_does_not_know_the_registry() -> None:
    """``datasets`` (the registry) imports ``cifar`` (the format), not the other way (type hints too)."""
    imported = set()
    for node in ast.walk(ast.parse(Path(cifar.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert "haloprune.data.datasets" not in imported
