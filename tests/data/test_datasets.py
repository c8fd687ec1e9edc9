"""The dataset registry and loading (haloprune.data.datasets): real Fashion-MNIST, discovery, splits,
subsets, verification, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from haloprune.core.errors import DataError
from haloprune.data import datasets as ds_mod
from haloprune.data import (
    find_data_dir,
    iterate_batches,
    load_dataset,
    write_idx,
)
from tests.helpers import FMNIST_FILES, one_line, tiny_arrays, write_dataset

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "tiny")


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    system = write_dataset(tmp_path / "system")
    monkeypatch.setattr(ds_mod, "SYSTEM_DATA_DIRS", {"fashion-mnist": system})
    monkeypatch.setattr(ds_mod, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("HALOPRUNE_DATA", raising=False)
    return {
        "system": system,
        "env": write_dataset(tmp_path / "env" / "fashion-mnist"),
        "explicit": write_dataset(tmp_path / "explicit"),
        "cache": tmp_path / "cache" / "fashion-mnist",
    }


def test_real_fashion_mnist() -> None:
    if not all((DEBIAN_FMNIST / f"{name}.gz").is_file() for name in FMNIST_FILES.values()):
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
    raw = tiny_arrays()
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
    msg = one_line(exc)
    assert "checksum" in msg and "verify=False" in msg and str(tiny_dir) in msg


def test_load_raw_files_and_gz_preferred(tmp_path: Path) -> None:
    raw_dir = write_dataset(tmp_path / "raw", gz=False)
    data = load_dataset("fashion-mnist", raw_dir, val_size=0, verify=False)
    assert len(data.x_train) == 60
    # .gz wins over the raw file when both exist.
    write_dataset(raw_dir, tiny_arrays(n_train=30, n_test=10, seed=9), gz=True)
    assert len(load_dataset("fashion-mnist", raw_dir, val_size=0, verify=False).x_train) == 30


def test_load_count_and_label_checks(tmp_path: Path) -> None:
    arrays = tiny_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    with pytest.raises(DataError, match="59 labels"):
        load_dataset("fashion-mnist", write_dataset(tmp_path / "a", arrays), verify=False, val_size=0)
    arrays = tiny_arrays()
    arrays["test_labels"][0] = 10
    with pytest.raises(DataError, match="go up to 10"):
        load_dataset("fashion-mnist", write_dataset(tmp_path / "b", arrays), verify=False, val_size=0)


def test_unknown_dataset() -> None:
    with pytest.raises(DataError) as exc:
        load_dataset("cifar-11")
    msg = one_line(exc)
    assert "fashion-mnist" in msg and "mnist" in msg


def test_cached_read_sees_file_changes(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d")
    assert len(load_dataset("fashion-mnist", folder, val_size=0, verify=False).x_train) == 60
    write_dataset(folder, tiny_arrays(n_train=40, seed=5))
    assert len(load_dataset("fashion-mnist", folder, val_size=0, verify=False).x_train) == 40


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
    msg = one_line(exc)
    for needle in ("empty-env", "absent", "cache", "apt-get install dataset-fashion-mnist", "--data-dir"):
        assert needle in msg
    assert "haloprune data download fashion-mnist" in msg
    write_dataset(places["cache"])
    assert find_data_dir("fashion-mnist", None) == places["cache"]
    # An explicit folder that lacks the files is an error, not a silent fallback.
    (tmp_path / "half").mkdir()
    write_idx(tmp_path / "half" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8), gzip=True)
    with pytest.raises(DataError) as exc:
        find_data_dir("fashion-mnist", tmp_path / "half")
    assert "t10k-labels-idx1-ubyte" in one_line(exc)
    with pytest.raises(DataError, match="does not exist"):
        find_data_dir("fashion-mnist", tmp_path / "nowhere")


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


def test_normalize_none_dataset_and_the_reference_cifar_constants(tiny_dir: Path) -> None:
    """``normalize="none"`` leaves pixels in [0, 1] (the HALO reference's MNIST); the default uses the
    dataset's mean and std; the reference's CIFAR constants need 3 channels."""
    raw = tiny_arrays()
    plain = load_dataset("fashion-mnist", tiny_dir, verify=False, val_size=0, normalize="none")
    assert plain.normalize == "none" and plain.mean_std == (0.0, 1.0)
    assert torch.equal(plain.x_train[0, 0], torch.from_numpy(raw["train_images"][0] / np.float32(255.0)))
    default = load_dataset("fashion-mnist", tiny_dir, verify=False, val_size=0)
    mean, std = ds_mod.DATASETS["fashion-mnist"].mean, ds_mod.DATASETS["fashion-mnist"].std
    assert default.mean_std == (mean, std)
    assert torch.allclose(default.x_train, (plain.x_train - mean) / std, atol=1e-6)
    with pytest.raises(DataError, match="3-channel") as err:
        load_dataset("fashion-mnist", tiny_dir, verify=False, normalize="reference-cifar")
    one_line(err)
    with pytest.raises(DataError, match="unknown normalization 'imagenet'"):
        load_dataset("fashion-mnist", tiny_dir, verify=False, normalize="imagenet")
    assert ds_mod.normalization(ds_mod.DATASETS["cifar100"], "reference-cifar") == ds_mod.REFERENCE_CIFAR
