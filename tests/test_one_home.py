"""Knowledge that has one home in the code stays there: atomic writes (core/io.py), mask storage
(pruning/masks.py), layer kinds (core/layers.py), dataset names (data/datasets.py) and SQL (the results
store). Each check reads the source with ``ast``; the primitive itself is tested at the end."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from haloprune.core.io import atomic_path
from haloprune.data.datasets import DATASETS
from tests.helpers import umask

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "haloprune"


def _trees(*roots: Path) -> Iterator[tuple[str, ast.Module]]:
    for root in roots:
        for f in sorted(root.rglob("*.py")):
            yield f.relative_to(ROOT).as_posix(), ast.parse(f.read_text())


def _strings(tree: ast.AST) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


# ------------------------------------------------------------------------------------- atomic writes

# The one home, and the CIFAR download, which moves a verified, extracted *folder* into place (a file
# primitive does not apply).
ATOMIC_OWNERS = {"src/haloprune/core/io.py", "src/haloprune/data/cifar.py"}


def test_files_are_renamed_into_place_only_by_core_io() -> None:
    found = []
    for path, tree in _trees(PACKAGE):
        if path in ATOMIC_OWNERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                )
                if "tempfile" in names:
                    found.append(f"{path}:{node.lineno} imports tempfile")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = _dotted(node.func)
            if name in ("os.replace", "os.rename", "shutil.move"):
                found.append(f"{path}:{node.lineno} {name}")
            elif node.func.attr == "replace" and len(node.args) == 1 and not node.keywords:
                found.append(f"{path}:{node.lineno} Path.replace")  # str.replace takes two arguments
    assert found == [], "write through haloprune.core.io.atomic_path"


# -------------------------------------------------------------------------------------- mask storage


def test_only_masks_py_knows_how_masks_are_stored() -> None:
    found = []
    for path, tree in _trees(PACKAGE, ROOT / "benchmarks"):
        if path == "src/haloprune/pruning/masks.py":
            continue
        for node in _strings(tree):
            v = node.value  # the buffer suffix spelled out, alone or in a state_dict key
            if v == "_mask" or (v.endswith("_mask") and "." in v):
                found.append(f"{path}:{node.lineno} {v!r}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("masks"):
                found += [
                    f"{path}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("_")
                ]
                found += [f"{path}:{node.lineno} imports SUFFIX" for a in node.names if a.name == "SUFFIX"]
            if isinstance(node, ast.Attribute) and node.attr in ("_buffers", "SUFFIX"):
                found.append(f"{path}:{node.lineno} .{node.attr}")
    assert found == [], "use the haloprune.pruning.masks API (attach_mask, get_masks, without_masks, ...)"


# ---------------------------------------------------------------------------------------- layer kinds

LAYER_CLASSES = {
    "Linear",
    "MultiheadAttention",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
}
# The two layer types Sparse VD has a variational version of: its own list, not a kind of layer.
LAYER_TUPLE_OK = {"src/haloprune/methods/svdo.py"}


def test_kinds_of_layer_are_listed_only_in_core_layers() -> None:
    found = []
    for path, tree in _trees(PACKAGE):
        if path == "src/haloprune/core/layers.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("_BatchNorm", "_ConvNd", "_NormBase"):
                found.append(f"{path}:{node.lineno} {node.attr}")
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and path not in LAYER_TUPLE_OK:
                layers = [e for e in node.elts if isinstance(e, ast.Attribute) and e.attr in LAYER_CLASSES]
                if len(layers) >= 2:
                    found.append(f"{path}:{node.lineno} ({', '.join(e.attr for e in layers)})")
    assert found == [], "use CONV / LINEAR / BATCHNORM / DENSE from haloprune.core.layers"


# -------------------------------------------------------------------------------------- dataset names


def test_dataset_names_are_listed_only_in_the_registry() -> None:
    found = []
    for path, tree in _trees(PACKAGE, ROOT / "benchmarks"):
        if path == "src/haloprune/data/datasets.py":
            continue
        for node in ast.walk(tree):
            elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else []
            names = [e.value for e in elts if isinstance(e, ast.Constant) and e.value in DATASETS]
            if len(names) >= 2:
                found.append(f"{path}:{node.lineno} {names}")
    assert found == [], "derive dataset names from haloprune.data.datasets.DATASETS"


# ------------------------------------------------------------------------------------------------ SQL

SQL = re.compile(r"\b(SELECT\b|INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET|CREATE\s+(TABLE|INDEX)|PRAGMA)")
STORE = "src/haloprune/experiments/store.py"


def test_sql_lives_only_in_the_results_store() -> None:
    found = []
    for path, tree in _trees(PACKAGE, ROOT / "benchmarks"):
        if path == STORE:
            continue
        found += [f"{path}:{n.lineno} {n.value.split()[0]!r}" for n in _strings(tree) if SQL.search(n.value)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "conn":
                found.append(f"{path}:{node.lineno} .conn")
            if isinstance(node, ast.Import) and any(a.name == "sqlite3" for a in node.names):
                found.append(f"{path}:{node.lineno} import sqlite3")
    assert found == [], "add a ResultStore method instead"


def test_the_store_writes_results_rows_in_one_place() -> None:
    tree = ast.parse((ROOT / STORE).read_text())
    inserts = [n.lineno for n in _strings(tree) if re.search(r"INSERT\s+INTO\s+results\b", n.value)]
    assert len(inserts) == 1, inserts


# ------------------------------------------------------------------------------------- atomic_path


def test_atomic_path_renames_a_complete_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and tmp.exists()
        tmp.write_bytes(b"new")  # a writer that reopens the file by name
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask()
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_atomic_path_leaves_the_old_file_and_no_temporary_on_failure(
    tmp_path: Path, error: type[BaseException]
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise error("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
