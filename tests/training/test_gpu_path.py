"""The options of the GPU path, tested on what the CPU can run: bf16 autocast, channels_last, per-batch
augmentation (reproducible, resumable). The CUDA test runs only where a GPU is present."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from haloprune.config import TrainConfig, load_config
from haloprune.models import build_model
from haloprune.training.run import train
from tests.data.test_cifar import write_cifar

SMALL = [
    'data.name="cifar10"',
    "data.val_size=20",
    'model.name="vgg16-bn"',
    "model.width=0.0625",
    "optim.epochs=2",
    "optim.batch_size=16",
    "optim.lr=0.05",
    'prune.scope="conv"',
    "penalty.name=halo",
    "penalty.xi=1e-4",
    "penalty.psi=1e-2",
    'penalty.scope="conv"',
]


@pytest.fixture
def cifar_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HALOPRUNE_COMPILE", "0")  # the eager fused step: same update, no compile time
    write_cifar(tmp_path / "data", "cifar10")

    def make(*extra: str) -> TrainConfig:
        return load_config(
            TrainConfig, None, [*SMALL, f"data.dir='{tmp_path / 'data'}'", f"out_dir='{tmp_path}'", *extra]
        )

    return make


def test_bf16_autocast_trains_in_bf16_and_keeps_fp32_state(cifar_cfg, monkeypatch) -> None:
    dtypes: list[torch.dtype] = []
    original = torch.nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        if torch.is_grad_enabled():
            dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    res = train(cifar_cfg('optim.amp="bf16"', "optim.epochs=1"), save=False, progress=False)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # training forward ran under autocast
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in res.model.parameters())
    assert res.penalty.lam.dtype == torch.float32 and torch.isfinite(res.penalty.lam).all()
    assert not torch.equal(res.penalty.lam, torch.ones_like(res.penalty.lam))
    assert all(torch.isfinite(torch.tensor(r["train_ce"])) for r in res.history)


@pytest.mark.parametrize("name", ["vgg16-bn", "resnet18"])
def test_channels_last_gives_the_same_outputs(name: str) -> None:
    model = build_model(name, in_channels=3, width=0.125).eval()
    x = torch.randn(4, 3, 32, 32)
    ref = model(x)
    model.to(memory_format=torch.channels_last)
    assert (
        model.stem[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        if name == "resnet18"
        else True
    )
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_channels_last_training_matches_contiguous(cifar_cfg) -> None:
    a = train(cifar_cfg("optim.channels_last=false", "optim.epochs=1"), save=False, progress=False)
    b = train(cifar_cfg("optim.channels_last=true", "optim.epochs=1"), save=False, progress=False)
    assert b.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        if pa.is_floating_point():
            torch.testing.assert_close(pb, pa, rtol=1e-3, atol=1e-4, msg=name)
    torch.testing.assert_close(b.penalty.lam, a.penalty.lam, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_augmented_training_resumes_exactly(cifar_cfg, tmp_path: Path) -> None:
    """The crops and flips come from the run's generator: resuming after epoch 1 replays them exactly."""
    full = train(cifar_cfg("name=full"), progress=False)
    assert full.data.augment  # on by default for CIFAR
    run = tmp_path / "full"
    for name in ("model.pt", "checkpoint.pt", "checkpoint.pt.sha256"):  # back to the end of epoch 1
        (run / name).unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "falling back to the previous checkpoint"
        resumed = train(cifar_cfg("name=full"), resume=True, progress=False)
    plain = train(cifar_cfg("name=plain", "data.augment=false"), save=False, progress=False)
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert not torch.equal(plain.model.features[0].weight, full.model.features[0].weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last(cifar_cfg) -> None:
    res = train(cifar_cfg('device="cuda"', 'optim.amp="bf16"'), save=False, progress=False)
    assert next(res.model.parameters()).is_cuda
    assert res.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
