"""Compact export of pruned models: bit-exact round trip, small files, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import haloprune
from haloprune import build_model, global_magnitude_prune, save_sparse
from haloprune.errors import HaloPruneError
from haloprune.masks import get_masks


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5", "vgg16-bn"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98, 0.999])
def test_round_trip_is_bit_exact(tmp_path: Path, name: str, sparsity: float) -> None:
    kwargs = {"width": 0.125} if name == "vgg16-bn" else {}
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    if name == "vgg16-bn":  # non-trivial BatchNorm statistics must survive too
        model.train()
        model(torch.randn(8, 1, 28, 28))
    global_magnitude_prune(model, sparsity)
    path = save_sparse(model, tmp_path / "m.safetensors", architecture={"name": name, "kwargs": kwargs})
    loaded = haloprune.load(path)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    assert get_masks(loaded).keys() == get_masks(model).keys()
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), loaded(x))


def test_98_percent_lenet300_file_is_under_5_percent_of_dense(tmp_path: Path) -> None:
    model = build_model("lenet-300-100")
    global_magnitude_prune(model, 0.98)
    path = save_sparse(model, tmp_path / "m.safetensors", architecture={"name": "lenet-300-100"})
    dense = sum(p.numel() * 4 for p in model.parameters())
    assert path.stat().st_size < 0.05 * dense
    meta = haloprune.export.read_metadata(path)
    assert meta["format"] == "haloprune-sparse/1" and float(meta["sparsity"]) == pytest.approx(0.98, abs=1e-4)


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HaloPruneError, match="does not exist"):
        haloprune.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(HaloPruneError, match="not a haloprune export"):
        haloprune.load(junk)
