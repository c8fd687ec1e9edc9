"""MkDocs hooks: the reference pages generated from the code (``haloprune.docgen``) replace their
``<!-- generated: ... -->`` markers when the site is built."""

from __future__ import annotations

import re
from typing import Any

from haloprune.config import TrainConfig
from haloprune.docgen import cli_reference, config_reference
from haloprune.experiments.config import SweepConfig

MODELS = {"TrainConfig": TrainConfig, "SweepConfig": SweepConfig}
MARKER = re.compile(r"<!-- generated: (\w+)(?: (\w+))? -->")


def generated(kind: str, arg: str | None) -> str:
    if kind == "cli":
        return cli_reference()
    if kind == "config" and arg in MODELS:
        return config_reference(MODELS[arg])
    raise ValueError(f"unknown generated section {kind!r} {arg!r}")


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(lambda m: generated(m[1], m[2]), markdown)
