"""The README's and the docs' examples run as written.

Every ```python block of a page is executed, the page's blocks in order in one namespace (a tutorial
builds on its earlier blocks), in a fresh temporary directory, with the fused step eager
(``HALOPRUNE_COMPILE=0``: the same result without compile time). A block that cannot run here (it needs a
GPU, a cluster or several processes) is preceded by the line ``<!-- snippet: no-run (why) -->`` and is
only compiled. Every line of a ```bash / ```sh / ```console block that is a ``haloprune`` command is parsed
by the CLI's own parser: a renamed command or option fails here.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from haloprune.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
NO_RUN = "<!-- snippet: no-run"
SHELLS = {"bash", "sh", "shell", "console"}


def blocks(page: Path) -> list[tuple[str, str, bool, int]]:
    """``(language, code, runs, line)`` of each fenced block of ``page``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        body = "\n".join(line[len(m["indent"]) :] for line in m["body"].splitlines())
        runs = not before.strip().startswith(NO_RUN)
        out.append((m["lang"], body, runs, text.count("\n", 0, m.start()) + 1))
    return out


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


PYTHON_PAGES = [p for p in PAGES if any(lang == "python" for lang, *_ in blocks(p))]
SHELL_PAGES = [p for p in PAGES if any(lang in SHELLS for lang, *_ in blocks(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_rel)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HALOPRUNE_COMPILE", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__snippet__"}
    for lang, code, runs, line in blocks(page):
        if lang != "python":
            continue
        compiled = compile(code, f"{_rel(page)}:{line}", "exec")
        if runs:
            exec(compiled, namespace)  # the documentation's own example


def commands(page: Path) -> list[tuple[int, list[str]]]:
    """``(line, argv)`` of each ``haloprune`` command in the shell blocks of ``page`` (continued lines
    joined; a ``$`` prompt, ``VAR=value`` prefixes and ``$VAR`` words dropped; anything after a pipe or
    ``&&`` ignored)."""
    out = []
    for lang, code, _, line in blocks(page):
        if lang not in SHELLS:
            continue
        for i, raw in enumerate(code.replace("\\\n", " ").splitlines()):
            words = shlex.split(raw.split(" #")[0].removeprefix("$ "), comments=True)
            for sep in ("|", "&&", ";", ">"):
                words = words[: words.index(sep)] if sep in words else words
            while words and re.match(r"^\w+=", words[0]):
                words = words[1:]
            words = [w for w in words if not w.startswith("$")]  # shell variables: not knowable here
            if words[:1] == ["haloprune"]:
                out.append((line + 1 + i, words[1:]))
    return out


@pytest.mark.parametrize("page", SHELL_PAGES, ids=_rel)
def test_shell_commands_parse(page: Path) -> None:
    parser = build_parser()
    for line, argv in commands(page):
        if argv in (["--version"], ["--help"], ["-h"]) or "--help" in argv or "-h" in argv:
            continue
        try:
            parser.parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"{_rel(page)}:{line}: `haloprune {' '.join(argv)}` does not parse ({err.code})")


def test_snippets_are_found() -> None:
    """The collector sees the README's blocks (a fence syntax it missed would silently test nothing)."""
    assert ROOT / "README.md" in PYTHON_PAGES and ROOT / "README.md" in SHELL_PAGES
    assert os.path.exists(ROOT / "docs")
