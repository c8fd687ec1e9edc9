"""Every shipped config validates; configs/main.toml is the main job as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from haloprune.config import TrainConfig, load_config
from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.sweep import expand

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_main_toml_is_the_documented_main_job() -> None:
    """Target-mode HALO (no ξ/ψ grid), GMP, magnitude + fine-tuning and the dense network pruned once, at
    90/95/98/99%, one seed, 20 epochs each: 4 + 4 + 2 + 1 jobs."""
    cfg = load_sweep_config(CONFIGS / "main.toml")
    kinds = {name: m.kind for name, m in cfg.methods.items()}
    assert kinds == {"halo": "target", "gmp": "gmp", "magnitude-ft": "finetune", "dense": "penalty"}
    assert cfg.methods["halo"].grid == [] and cfg.methods["dense"].params == {"penalty": {"name": "none"}}
    assert cfg.sparsities == [0.9, 0.95, 0.98, 0.99] and cfg.seeds == [0] and cfg.optim.epochs == 20
    assert (cfg.name, cfg.model.name, cfg.data.name) == ("main", "lenet-300-100", "fashion-mnist")
    assert len(expand(cfg)) == 11


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.toml") if p.name != "main.toml"))
def test_train_configs_validate(path: Path) -> None:
    load_config(TrainConfig, path)


@pytest.mark.parametrize("path", sorted((CONFIGS / "paper").glob("*.toml")), ids=lambda p: p.stem)
def test_paper_sweep_configs_validate(path: Path) -> None:
    full = load_sweep_config(path)
    quick = load_sweep_config(path, quick=True)
    assert quick.name == f"{full.name}-quick" and quick.seeds == [0]
    assert all(len(m.grid) <= 1 for m in quick.methods.values())
    assert expand(quick)  # every job can be built


def _jobs(name: str) -> dict[str, dict]:
    """The first job of each method of a paper config: {method: {"run": ..., "params": ...}}."""
    jobs: dict[str, dict] = {}
    for job in expand(load_sweep_config(CONFIGS / "paper" / f"{name}.toml")):
        jobs.setdefault(job.method, job.spec)
    return jobs


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("cifar10-vgg16", "vgg16-bn-reference"),
        ("cifar100-vgg16", "vgg16-bn-reference"),
        ("cifar100-resnet50", "cifar-resnet50"),
    ],
)
def test_cifar_configs_are_the_references_recipe(name: str, model: str) -> None:
    """cifar.py --halo / --l1 and cifar_prune_iterative.py, as the jobs run them
    (docs/how-to/reproduce-paper.md)."""
    cfg = load_sweep_config(CONFIGS / "paper" / f"{name}.toml")
    o = cfg.optim
    assert (o.epochs, o.batch_size, o.lr, o.momentum, o.weight_decay) == (160, 64, 0.1, 0.9, 1e-4)
    assert (o.schedule, o.milestones, o.gamma, o.milestone_unit) == ("step", [80, 120], 0.1, "epoch")
    assert cfg.model.name == model and cfg.data.normalize == "reference-cifar" and cfg.data.augmented
    assert (cfg.prune.scope, cfg.prune.of) == ("conv", "nonzero")
    jobs = _jobs(name)
    halo, l1, dense = jobs["halo"], jobs["l1"], jobs["magnitude"]
    assert halo["run"]["optim"]["gamma"] == [0.1, 0.01]  # weights 0.1 -> 0.01 -> 1e-4
    assert halo["params"]["penalty"] == {
        "name": "halo",
        "scope": "conv",
        "include_bias": True,
        "lambda_gamma": [0.01, 0.01],  # λ 0.1 -> 1e-3 -> 1e-5
        "xi": 1e-8,
        "psi": 1e-8,
    }
    assert l1["run"]["optim"]["gamma"] == dense["run"]["optim"]["gamma"] == 0.1  # L1 runs decay normally
    assert l1["params"]["penalty"]["include_bias"] is True
    assert halo["run"]["prune"] == {"scope": "conv", "of": "nonzero"}
    quick = load_sweep_config(CONFIGS / "paper" / f"{name}.toml", quick=True)
    assert quick.device == "cpu" and quick.model.width == 0.25


@pytest.mark.parametrize("name", ["mnist-lenet300", "mnist-lenet5", "fmnist-lenet300-reference"])
def test_mnist_recipe_configs_are_the_references(name: str) -> None:
    """mnist.py --slope / --l1 / --ws and mnist_prune_iterative.py (docs/how-to/reproduce-paper.md)."""
    cfg = load_sweep_config(CONFIGS / "paper" / f"{name}.toml")
    o = cfg.optim
    assert (o.epochs, o.batch_size, o.lr, o.momentum, o.weight_decay) == (250, 100, 0.1, 0.9, 0.0)
    assert (o.schedule, o.milestone_unit, o.gamma) == ("step", "step", 0.01)
    assert o.milestones == [25_000 * k - 1 for k in range(1, 6)]
    assert cfg.data.normalize == "none" and (cfg.prune.scope, cfg.prune.of) == ("all", "nonzero")
    jobs = _jobs(name)
    assert jobs["halo"]["params"]["penalty"]["include_bias"] is True
    assert jobs["halo"]["params"]["penalty"]["lambda_schedule"] == "constant"
    assert jobs["l1"]["params"]["penalty"]["include_bias"] is True
    if "sws" in jobs:
        assert jobs["sws"]["params"]["penalty"]["lambda_schedule"] == "constant"
