"""Optional dependencies (the extras): imported where they are used, with one line naming the extra when
one is missing."""

from __future__ import annotations

from typing import Any

from haloprune.core.errors import ConfigError


def require(module: str, extra: str, who: str) -> Any:
    """Import and return ``module`` for ``who`` (what needs it, as the user named it); a missing package
    is a :class:`ConfigError` saying which extra to install."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ConfigError(
            f"{who} needs the {module.split('.')[0]} package: pip install 'haloprune[{extra}]'"
        ) from None
