"""``haloprune train`` with ``optim.parallel = "fsdp"``, 2 processes on the CPU (gloo), on real
Fashion-MNIST (small subsets: consistency checks, not results).

* The sharded run ends where the same config ends in one process (float tolerance): weights, λ and
  the metrics; its ``model.pt`` is one ordinary whole checkpoint that loads into the unsharded model.
* A sharded run stopped after its first epoch and resumed with ``haloprune train --resume`` ends
  bit-identical to the run that was never stopped — with HALO fused into AdamW in target mode (λ in an
  optimizer group of its own, cosine lr), and with HALO in the loss under SGD (λ's momentum in the
  optimizer's state).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from haloprune.config import TrainConfig, load_config
from tests.helpers import REPO, on_ranks, torchrun

pytestmark = pytest.mark.usefixtures("real_fmnist")

SMALL = ["data.train_subset=1500", "data.val_size=300", "data.test_subset=300", "optim.epochs=2"]
VIT = (REPO / "configs" / "vit-target.toml", ["optim.batch_size=100"])
LENET = (
    REPO / "configs" / "halo-lenet300.toml",
    ["optim.batch_size=100", "penalty.fused=false", "optim.lr=0.05"],
)
FSDP = ['optim.parallel="fsdp"']
ENV = {**os.environ, "HALOPRUNE_COMPILE": "0", "OMP_NUM_THREADS": "1"}


class Stop(Exception):
    """Raised after the first epoch's checkpoint: the run is killed there."""


def _config(tmp: Path, which: tuple[Path, list[str]], name: str, epochs: int = 2) -> TrainConfig:
    config, sets = which
    extra = [*SMALL, *sets, *FSDP, f"optim.epochs={epochs}", f"out_dir='{tmp}'", f"name='{name}'"]
    return load_config(TrainConfig, config, extra)


def _stopped(rank: int, world: int, cfg_json: str) -> None:
    """Train until the first epoch's sharded checkpoint is written, then die."""
    from haloprune.training import fsdp
    from haloprune.training.run import train

    original = fsdp.ShardedCheckpoint.on_epoch_end

    def then_stop(self, state, row) -> None:
        original(self, state, row)
        raise Stop

    fsdp.ShardedCheckpoint.on_epoch_end = then_stop  # type: ignore[method-assign]
    try:
        train(TrainConfig.model_validate_json(cfg_json), progress=False)
    except Stop:
        return
    raise AssertionError("the run was not stopped")


def _train_cli(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = torchrun(nproc, "-m", "haloprune", "train", "--quiet", *args)
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


def _cli_args(cfg: TrainConfig) -> list[str]:
    path = cfg.run_dir.parent / f"{cfg.name}.toml"
    from haloprune.config import to_toml

    path.write_text(to_toml(cfg))
    return ["--config", str(path)]


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each setting trained sharded, never stopped (one launch each, shared by the tests)."""
    out = tmp_path_factory.mktemp("fsdp-train")
    runs = {}
    for which in (VIT, LENET):
        cfg = _config(out, which, f"whole-{which[0].stem}")
        runs[which[0].stem] = (cfg, _train_cli(2, *_cli_args(cfg)))
    return runs


def test_a_sharded_run_ends_where_one_process_ends(sharded_runs, tmp_path: Path) -> None:
    from haloprune.training.run import load_trained, train

    cfg, done = sharded_runs[VIT[0].stem]
    assert done.stdout.count("val accuracy") == 1  # the first process reports, once
    sharded = cfg.run_dir
    assert (sharded / "checkpoint" / ".metadata").is_file()
    assert sorted(p.name for p in (sharded / "checkpoint").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    # the same config in one process ("fsdp" changes nothing there)
    one = train(cfg.model_copy(update={"name": "one", "out_dir": str(tmp_path)}), progress=False)
    # model.pt: an ordinary whole checkpoint, loaded into the unsharded model by a single process
    _, model, halo = load_trained(sharded)
    for name, p in one.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], p, atol=2e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(halo.lam, one.penalty.lam, atol=1e-6, rtol=1e-5)
    assert not torch.equal(halo.lam, torch.ones_like(halo.lam))  # HALO did act on λ
    plain = torch.load(sharded / "model.pt", weights_only=True)["model"]
    model.load_state_dict({k: v for k, v in plain.items() if not k.endswith("_mask")})
    ours, theirs = _rows(sharded), _rows(one.run_dir)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert ours[-1]["density"] == pytest.approx(0.2, abs=0.005)  # target mode, steered globally


@pytest.mark.parametrize("which", [VIT, LENET], ids=["vit-adamw-target-fused", "lenet-sgd-in-loss"])
def test_a_stopped_sharded_run_resumes_bit_identically(sharded_runs, tmp_path: Path, which) -> None:
    whole, _ = sharded_runs[which[0].stem]
    stopped = _config(tmp_path, which, "stopped")
    on_ranks(_stopped, 2, stopped.model_dump_json())
    assert len(_rows(stopped.run_dir)) == 1 and not (stopped.run_dir / "model.pt").exists()
    _train_cli(2, "--resume", str(stopped.run_dir))
    assert _rows(stopped.run_dir) == _rows(whole.run_dir)
    a = torch.load(whole.run_dir / "model.pt", weights_only=True)
    b = torch.load(stopped.run_dir / "model.pt", weights_only=True)
    for part in ("model", "penalty"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[part][key]), f"{part}: {key}"


def test_a_one_process_checkpoint_is_not_resumed_sharded(tmp_path: Path) -> None:
    from haloprune.training.run import train

    cfg = _config(tmp_path, LENET, "single", epochs=1)
    train(cfg, progress=False)
    (cfg.run_dir / "model.pt").unlink()  # as if it had stopped after its checkpoint
    cmd = torchrun(2, "-m", "haloprune", "train", "--quiet", "--resume", str(cfg.run_dir))
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0
    assert "was checkpointed by one process" in done.stderr
    assert "Traceback" not in done.stderr.split("haloprune: error")[0]
