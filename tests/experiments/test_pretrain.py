"""Sweeps that start from pretrained weights: ``[pretrain]`` (a dense job trained once per seed, every
method fine-tuning from it) and ``model.init_from`` (a file), on real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from haloprune.build import build_network
from haloprune.cli import main
from haloprune.config import RunConfig
from haloprune.core.errors import ConfigError
from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.store import ResultStore
from haloprune.experiments.sweep import expand

SWEEP = """
name = "ft"
seeds = [0]
sparsities = [0.9]
db = "{db}"

[data]
train_subset = 2000
val_size = 500
test_subset = 1000

[optim]
epochs = 1
lr = 0.05

[pretrain]
epochs = 2
optim = {{ lr = 0.1 }}

[methods.frozen]        # fine-tuning at a vanishing lr: the pretrained network, pruned
kind = "finetune"
params = {{ finetune_fraction = 1.0, finetune_lr = 1e-12 }}

[methods.halo]
kind = "target"
params = {{ penalty = {{ name = "halo" }} }}
"""


def write_sweep(tmp_path: Path, text: str = SWEEP) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text.format(db=tmp_path / "results.sqlite"))
    return path


def test_pretrain_jobs_come_first_and_define_their_dependents(tmp_path: Path) -> None:
    cfg = load_sweep_config(write_sweep(tmp_path))
    jobs = expand(cfg)
    assert [j.method for j in jobs] == ["pretrain", "frozen", "halo"]
    pre, frozen, halo = jobs
    assert pre.spec["run"]["optim"]["epochs"] == 2 and pre.spec["run"]["optim"]["lr"] == 0.1
    assert frozen.needs == halo.needs == (pre.key,) and pre.needs == ()
    assert frozen.spec["pretrain"] == pre.result_spec()
    assert frozen.spec["init_state"].endswith(f"states/{pre.key}.pt")
    # a different pre-training makes different fine-tuning jobs; where it is stored does not
    other = load_sweep_config(write_sweep(tmp_path), ["pretrain.epochs=3"])
    assert expand(other)[1].key != frozen.key
    assert "init_state" in frozen.not_in_result


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("methods.pretrain={kind='gmp'}", "methods.pretrain: that name is the [pretrain] job's"),
        ("model.init_from='x.pt'", "either model.init_from or [pretrain]"),
        ("pretrain.optim={lrr=1}", "pretrain: optim: lrr"),
    ],
)
def test_pretrain_config_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sweep_config(write_sweep(tmp_path), [override])


@pytest.mark.slow
def test_sweep_fine_tunes_from_its_pretraining(
    tmp_path: Path, real_fmnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_sweep(tmp_path)
    args = ["sweep", str(config), "--quiet", "--jobs", "2"]
    assert main(args) == 0
    assert "done 3, skipped 0" in capsys.readouterr().out
    with ResultStore(tmp_path / "results.sqlite") as store:
        records = {r["method"]: r for r in store.records("ft")}
    assert set(records) == {"pretrain", "frozen", "halo"}
    # the budget counts the pre-training: 2 epochs dense + 1 epoch of fine-tuning
    assert records["pretrain"]["epochs_used"] == 2
    assert records["frozen"]["epochs_used"] == records["halo"]["epochs_used"] == 3
    # fine-tuning at lr 1e-12 leaves the pretrained network: its pruned accuracy is the pretrain job's
    assert records["frozen"]["accuracy"] == pytest.approx(records["pretrain"]["accuracy"], abs=0.11)
    assert records["pretrain"]["accuracy"] > 60  # trained (chance is 10%)
    assert records["halo"]["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)

    # trained once: a rerun runs nothing; a second sweep in the store with the same pre-training reuses it
    assert main(args) == 0
    assert "done 0, skipped 3" in capsys.readouterr().out
    second = write_sweep(tmp_path, SWEEP.replace('name = "ft"', 'name = "ft2"'))
    second.rename(tmp_path / "second.toml")
    assert main(["sweep", str(tmp_path / "second.toml"), "--quiet"]) == 0
    assert "done 0, skipped 0 (already done), reused 3" in capsys.readouterr().out


def test_init_from_in_a_sweep_is_keyed_by_the_file_contents(tmp_path: Path) -> None:
    weights = tmp_path / "dense.pt"
    torch.save(build_network(RunConfig()).state_dict(), weights)
    pretrain = "[pretrain]\nepochs = 2\noptim = {{ lr = 0.1 }}\n"
    config = write_sweep(tmp_path, SWEEP.replace(pretrain, f"[model]\ninit_from = '{weights}'\n"))
    cfg = load_sweep_config(config)
    key = expand(cfg)[0].key
    assert [j.needs for j in expand(cfg)] == [(), ()]
    torch.save({k: v + 1 for k, v in build_network(RunConfig()).state_dict().items()}, weights)
    assert expand(cfg)[0].key != key, "new weights in the same file make new jobs"
    weights.unlink()
    with pytest.raises(ConfigError, match=f"model.init_from {weights} does not exist"):
        expand(cfg)
