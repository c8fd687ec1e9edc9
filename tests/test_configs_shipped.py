"""Every shipped config validates; configs/main.toml is exactly the main job's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from haloprune.config import CompareConfig, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_main_toml_matches_defaults() -> None:
    assert load_config(CompareConfig, CONFIGS / "main.toml") == CompareConfig()


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.toml") if p.name != "main.toml"))
def test_train_configs_validate(path: Path) -> None:
    load_config(TrainConfig, path)
