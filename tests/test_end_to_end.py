"""Real train → prune → evaluate on real Fashion-MNIST, through the CLI, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haloprune.cli import main

SMALL = [
    "--epochs",
    "2",
    "--set",
    "data.train_subset=4000",
    "--set",
    "data.val_size=1000",
    "--set",
    "data.test_subset=2000",
]
METHODS = [
    "--set",
    "methods.l1.grid=[{xi=1e-4}]",
    "--set",
    "methods.halo.grid=[{xi=1e-7, psi=1e-3}, {xi=1e-5, psi=1e-4}]",
]


def _run_main(tmp_path: Path, extra: list[str]) -> list[dict]:
    args = ["run", "--quiet", "--set", f"out_dir='{tmp_path}'", *METHODS, *extra]
    assert main(args) == 0
    out = tmp_path / "main"
    for name in ("report.md", "results.json", "accuracy_vs_sparsity.png", "selection.json"):
        assert (out / name).stat().st_size > 0, name
    records = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in records} == {"dense", "l1", "halo"}
    for r in records:
        assert {"method", "sparsity", "accuracy", "seed", "achieved_sparsity"} <= set(r)
        assert abs(r["achieved_sparsity"] - r["sparsity"]) < 1e-4
    return records


def test_main_job_small_slice(tmp_path: Path, real_fmnist: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _run_main(
        tmp_path,
        SMALL,
    )
    acc = {(r["method"], r["sparsity"]): r["accuracy"] for r in records}
    assert acc[("dense", 0.5)] > 60.0  # chance is 10%
    assert acc[("halo", 0.5)] > 60.0
    printed = capsys.readouterr().out
    assert "| sparsity | dense | l1 | halo |" in printed

    # The trained runs are ordinary run directories: prune one again from the CLI.
    assert main(["prune", str(tmp_path / "main" / "dense"), "--sparsity", "0.9", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "fc1.weight" in out and "| 90% |" in out and "per-layer sparsity at 90%" in out
    # a second prune at other settings adds to the run's prune results, it does not replace them
    assert main(["prune", str(tmp_path / "main" / "dense"), "--sparsity", "0.5", "0.9", "--per-layer"]) == 0
    saved = json.loads((tmp_path / "main" / "dense" / "prune_results.json").read_text())
    assert sorted((r["sparsity"], r["per_layer"]) for r in saved) == [(0.5, True), (0.9, False), (0.9, True)]
    capsys.readouterr()

    # ... and export it compactly; the file loads back into the same network.
    assert main(["export", str(tmp_path / "main" / "dense"), "--sparsity", "0.98"]) == 0
    exported = tmp_path / "main" / "dense" / "model-0.98.safetensors"
    assert "% of the dense fp32 parameters" in capsys.readouterr().out
    import haloprune

    assert haloprune.sparsity_report(haloprune.load(exported))[-1].sparsity == pytest.approx(0.98, abs=1e-4)

    # Running the same job again reuses the finished runs instead of training again.
    mtime = (tmp_path / "main" / "dense" / "model.pt").stat().st_mtime_ns
    _run_main(
        tmp_path,
        SMALL,
    )
    assert (tmp_path / "main" / "dense" / "model.pt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_main_job_full_data_three_epochs(tmp_path: Path, real_fmnist: Path) -> None:
    records = _run_main(tmp_path, ["--epochs", "3"])
    acc = {(r["method"], r["sparsity"]): r["accuracy"] for r in records}
    assert acc[("dense", 0.5)] > 84.0
    assert acc[("halo", 0.9)] > 80.0
