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


def test_cifar_configs_follow_the_reference() -> None:
    for name in ("cifar10-vgg16", "cifar100-vgg16", "cifar100-resnet50"):
        cfg = load_sweep_config(CONFIGS / "paper" / f"{name}.toml")
        o = cfg.optim
        assert (o.epochs, o.batch_size, o.lr, o.momentum, o.weight_decay) == (160, 64, 0.1, 0.9, 1e-4)
        assert (o.schedule, o.milestones, o.gamma) == ("step", [80, 120], 0.1)
        assert cfg.prune.scope == "conv" and cfg.data.augmented
        assert cfg.methods["halo"].grid[0] == {"penalty": {"xi": 1e-8, "psi": 1e-8}}
        quick = load_sweep_config(CONFIGS / "paper" / f"{name}.toml", quick=True)
        assert quick.device == "cpu" and quick.model.width == 0.25
