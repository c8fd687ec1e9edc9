"""The examples in the package's docstrings run and print what they say (``>>>`` lines), one test per
module, so a docstring example cannot go stale. Same as ``pytest --doctest-modules src/haloprune``."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "haloprune"


def _module_names() -> list[str]:
    names = []
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = ["haloprune", *f.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__main__":  # importing it runs the CLI
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _import(name: str) -> ModuleType:
    """The module; skipped when it needs an optional package (an extra) that is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing = err if isinstance(err, ModuleNotFoundError) else err.__cause__
        if isinstance(missing, ModuleNotFoundError) and not (missing.name or "haloprune").startswith(
            "haloprune"
        ):
            pytest.skip(f"{name} needs {missing.name}, which is not installed")
        raise


def _run(module: ModuleType, name: str) -> tuple[int, int, str]:
    """(failed, tried, report) of the examples in ``module``'s docstrings."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    return runner.failures, runner.tries, "".join(report)


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples_run(name: str) -> None:
    failed, _, report = _run(_import(name), name)
    assert failed == 0, report


def test_a_wrong_example_fails() -> None:
    module = ModuleType("example", ">>> 1 + 1\n3\n")
    failed, tried, report = _run(module, "example")
    assert (failed, tried) == (1, 1) and "Expected:\n    3\nGot:\n    2" in report
