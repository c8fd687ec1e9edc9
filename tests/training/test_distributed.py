"""Data-parallel training on the CPU (gloo), 2 processes: one model on every rank, one writer.

A consistency check on a tiny CIFAR-format fixture (random pixels, not a reported result): a small
VGG-16-bn with BatchNorm, augmentation and HALO's fused update trains for 2 epochs on 2 ranks; weights,
BatchNorm statistics, λ and the pruned model must be bit-identical across ranks, and only rank 0 may write."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from haloprune.config import TrainConfig, load_config
from haloprune.training.distributed import World, shard
from tests.data.test_cifar import write_cifar
from tests.helpers import on_ranks, torchrun
from tests.training.test_gpu_path import SMALL

CFG = [*SMALL, "optim.eval_batch_size=64", "name=ddp"]  # the tiny CIFAR-format VGG + HALO run


def _worker(rank: int, world: int, cfg_json: str, out: str) -> None:
    from haloprune.pruning import global_magnitude_prune
    from haloprune.training import callbacks
    from haloprune.training import run as train_mod

    writes: list[str] = []
    writers = [(train_mod, fn) for fn in ("save_text", "save_json", "save_torch")]
    writers += [(callbacks, "save_verified"), (callbacks.MetricsFile, "on_epoch_end")]
    for owner, fn in writers:
        original = getattr(owner, fn)

        def spy(*args, _original=original, _fn=fn, **kwargs):
            writes.append(f"{_fn} {args[-1] if _fn != 'on_epoch_end' else args[0].path}")
            return _original(*args, **kwargs)

        setattr(owner, fn, spy)
    cfg = TrainConfig.model_validate_json(cfg_json)
    res = train_mod.train(cfg, progress=False)
    trained = {k: v.clone() for k, v in res.model.state_dict().items()}
    global_magnitude_prune(res.model, 0.9, scope="conv")
    torch.save(
        {
            "trained": trained,
            "lam": res.penalty.lam.detach().clone(),
            "pruned": res.model.state_dict(),
            "writes": writes,
            "history": res.history,
        },
        Path(out) / f"rank{rank}.pt",
    )


def test_shard_covers_the_batch() -> None:
    for n in (1, 7, 16, 17):
        parts = [shard(n, World(r, 3)) for r in range(3)]
        assert [i for p in parts for i in range(n)[p]] == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_two_ranks_stay_identical(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", "cifar10")
    cfg = load_config(TrainConfig, None, [*CFG, f"data.dir='{tmp_path / 'data'}'", f"out_dir='{tmp_path}'"])
    out = tmp_path / "out"
    out.mkdir()
    on_ranks(_worker, 2, cfg.model_dump_json(), str(out))
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for key in ("trained", "pruned"):
        assert r0[key].keys() == r1[key].keys()
        for name, t in r0[key].items():
            assert torch.equal(t, r1[key][name]), f"{key}: {name} differs between ranks"
    assert torch.equal(r0["lam"], r1["lam"])
    assert not torch.equal(r0["lam"], torch.ones_like(r0["lam"]))  # HALO did act on λ
    assert r0["history"] == [
        {**row, "seconds": r0["history"][i]["seconds"], "images_per_s": r0["history"][i]["images_per_s"]}
        for i, row in enumerate(r1["history"])
    ]
    assert r1["writes"] == [] and any("model.pt" in w for w in r0["writes"])
    run = tmp_path / "ddp"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # one line per epoch, not per rank
    saved = torch.load(run / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], r0["trained"][k]) for k in saved)
    assert json.loads((run / "final_metrics.json").read_text())["epoch"] == 2


@pytest.mark.slow
def test_torchrun_cli(tmp_path: Path) -> None:
    """The documented command: ``torchrun --nproc_per_node=2 -m haloprune train --config ...`` (gloo)."""
    write_cifar(tmp_path / "data", "cifar10")
    config = Path(__file__).resolve().parents[2] / "configs" / "halo-cifar10-vgg16.toml"
    sets = ["device=cpu", 'optim.amp="none"', "model.width=0.0625", "optim.epochs=2", "optim.batch_size=16"]
    sets += ["data.val_size=20", f"out_dir='{tmp_path}'"]
    cmd = torchrun(
        2, "-m", "haloprune", "train", "--config", str(config), "--data-dir", str(tmp_path / "data")
    )
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "HALOPRUNE_COMPILE": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("val accuracy") == 1  # rank 0 reports, once
    run = tmp_path / "halo-cifar10-vgg16"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "model.pt").is_file()
