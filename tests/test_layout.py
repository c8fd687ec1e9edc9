"""The package's shape: no import cycles (lazy imports and those under ``if TYPE_CHECKING:`` included: a
cycle of type-only imports is a cycle of knowledge all the same), dependencies only downwards through the
layers of docs/explanation/architecture.md, and the shipped sweep configs expand to the job keys they always
had (so a results store written before a refactor is still found)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.sweep import expand

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "haloprune"

# Bottom to top; a module may import only from its own layer or below. ``haloprune`` (the package's
# public API) and ``__main__`` sit on top and are not listed.
LAYERS = [
    ["core"],
    ["penalties", "models", "data"],
    ["pruning"],
    ["config"],
    ["build"],
    ["training"],
    ["methods"],
    ["integrations"],
    ["experiments"],
    ["export"],
    ["cli", "docgen"],
]
# Optional dependencies imported only where they are needed (an extra may be missing).
# (a dotted name: that module and the ones under it)
LAZY_OK = {
    "onnx",
    "onnxruntime",
    "onnxscript",
    "matplotlib",
    "torch.utils.tensorboard",
    "tensorboard",
    "mlflow",
    "wandb",  # the experiment loggers' backends
    "submitit",  # a requeued sweep job's checkpoint hook, in submitit's worker
    "torch.distributed.tensor",  # DTensor (0.6 s to import): only once a model is sharded (core/sharded.py)
    "torch.distributed.fsdp",  # FSDP2 (0.5 s), and its device mesh: only when a run shards its model
    "torch.distributed.device_mesh",
    "torch._dynamo.config",  # torch.compile's machinery: only when a fused HALO step is first compiled
    "haloprune.training.fsdp",  # sharded checkpoints (0.8 s: torch's distributed checkpointing), likewise
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _own(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import of ``module``, those under
    ``if TYPE_CHECKING:`` included; ``from pkg import name`` counts as importing ``pkg.name`` when that is
    a module."""
    path = MODULES[module]
    return _imports_in(ast.parse(path.read_text()), module, path.name == "__init__.py")


def _imports_in(tree: ast.AST, module: str, is_pkg: bool) -> list[tuple[str, int, bool]]:
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = module.split(".") if is_pkg else module.split(".")[:-1]
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for a in child.names:
                    full = f"{base}.{a.name}"
                    found.append((full if full in MODULES else base, child.lineno, top))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top and not nested)

    visit(tree, True)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for name, _, _ in _imports(m):
            target = _own(name)
            if target and target != m and not m.startswith(target + "."):
                graph[m].add(target)  # a package's own __init__ is not a dependency of its submodules
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    return None


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_type_checking_imports_count() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from haloprune.core import io\n"
    found = _imports_in(ast.parse(source), "haloprune.pruning.masks", False)
    assert ("haloprune.core.io", 3, True) in found


def test_every_module_has_a_layer() -> None:
    top = {"haloprune", "haloprune.__main__"}
    assert [m for m in MODULES if m not in top and _layer(m) is None] == []


def test_dependencies_point_down_the_layers() -> None:
    upward = []
    for m, deps in _graph().items():
        lm = _layer(m)
        for d in deps:
            ld = _layer(d)
            if lm is not None and ld is not None and ld > lm:
                upward.append(f"{m} -> {d}")
    assert upward == []


def test_lazy_imports_only_for_optional_dependencies() -> None:
    lazy = []
    for m in MODULES:
        for name, line, top in _imports(m):
            optional = any(name == ok or name.startswith(ok + ".") for ok in LAZY_OK)
            if not top and not optional:
                lazy.append(f"{MODULES[m].relative_to(SRC)}:{line} {name}")
    assert lazy == []


GOLDEN = Path(__file__).parent / "fixtures" / "sweep_job_keys.json"


@pytest.mark.parametrize("entry", sorted(json.loads(GOLDEN.read_text())), ids=str)
def test_shipped_sweep_configs_keep_their_job_keys(entry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded from the configs before the layout change; a store's finished jobs are found by key. (The
    target-mode HALO jobs were recorded again when they began to record their control, exact by default,
    and those with Adam/AdamW when they began to record the shrinkage bound, 10 by default.)"""
    monkeypatch.chdir(ROOT)  # the store and state paths are relative to the working directory
    path, _, flag = entry.partition(" ")
    cfg = load_sweep_config(path, quick=flag == "--quick")
    got = [[j.method, j.seed, j.sparsity, j.key] for j in expand(cfg)]
    assert got == json.loads(GOLDEN.read_text())[entry]
