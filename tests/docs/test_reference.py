"""The reference pages are complete: every public name in the API page, every command and option in the
CLI reference, every config key (with a meaning) in the config reference."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from haloprune.cli import build_parser
from haloprune.config import TrainConfig
from haloprune.docgen import cli_commands, cli_reference, config_keys, config_reference
from haloprune.experiments.config import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "reference" / "api.md"

# the modules whose ``__all__`` is haloprune's public API (internal helpers live in modules not listed)
PUBLIC = [
    "haloprune",
    "haloprune.penalties",
    "haloprune.penalties.halo",
    "haloprune.pruning",
    "haloprune.models",
    "haloprune.export",
    "haloprune.data",
    "haloprune.training",
    "haloprune.training.fsdp",
    "haloprune.training.distributed",
    "haloprune.integrations.lightning",
    "haloprune.integrations.transformers",
    "haloprune.integrations.loggers",
    "haloprune.methods",
    "haloprune.experiments.runner",
    "haloprune.experiments.executors",
]


def _resolve(path: str) -> object:
    """The object a ``::: module.name`` directive documents."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = {id(_resolve(p)) for p in re.findall(r"^::: ([\w.]+)\s*$", API.read_text(), re.M)}
    missing = [
        f"{m}.{name}"
        for m in PUBLIC
        for name in importlib.import_module(m).__all__
        if id(getattr(importlib.import_module(m), name)) not in documented
    ]
    assert not missing, f"not in docs/reference/api.md: {missing}"


def test_api_reference_names_only_public_objects() -> None:
    """A directive for a name that was renamed or made private fails here (before the strict build)."""
    for path in re.findall(r"^::: ([\w.]+)\s*$", API.read_text(), re.M):
        module, _, name = path.rpartition(".")
        assert name in importlib.import_module(module).__all__, path


def test_cli_reference_has_every_command_and_option() -> None:
    text = cli_reference()
    for command, options in cli_commands().items():
        assert f"haloprune {command}`" in text, command
        for option in options:
            assert f"`{option}`" in text, f"{command} {option}"


@pytest.mark.parametrize("model", [TrainConfig, SweepConfig], ids=lambda m: m.__name__)
def test_config_reference_has_every_key_with_a_meaning(model: type) -> None:
    text = config_reference(model)
    keys = config_keys(model)
    sections = {k for k in keys if any(other.startswith(k + ".") for other in keys)}
    for key, meaning in keys.items():
        if key in sections:
            continue
        section, _, name = key.rpartition(".")
        assert f"[{section}]" in text or not section, key
        assert f"| `{name}` |" in text, key
        assert meaning, f"{model.__name__}: config key {key} has no comment in its model's source"


def test_cli_reference_parser_is_the_real_one() -> None:
    """Every command the parser has appears (the reference walks the real parser, not a copy)."""
    assert set(cli_commands(build_parser())) >= {"train", "sweep", "report", "run", "prune", "export"}
