"""The bottom layer: errors, the registry, atomic file writes, parameter selection, layer types and
schedules. Nothing in here imports the rest of haloprune."""

__version__ = "0.1.0"  # keep equal to pyproject.toml (a test checks)
