"""User-facing errors.

Anything the user can fix (a bad config, missing or corrupt data, a wrong path) raises
:class:`HaloPruneError`. The CLI prints its message as one line and exits with code 2; library
users catch it like any other exception. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class HaloPruneError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""

    exit_code = 2


class ConfigError(HaloPruneError):
    """A config file or ``--set`` override is invalid."""


class DataError(HaloPruneError):
    """A dataset is missing, truncated, corrupt or does not match its checksum."""


class SelectionError(HaloPruneError, ValueError):
    """The parameters to penalise or prune cannot be selected: a scope or an ``include``/``exclude`` glob
    matches nothing in this model (a ``ValueError`` too, for library callers)."""
