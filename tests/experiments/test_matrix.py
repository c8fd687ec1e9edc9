"""The benchmark matrix (configs/matrix/, docs/results/matrix.md): every setting validates, and the whole
matrix runs at its ``--quick`` scale on real Fashion-MNIST with one command, then reports with one more,
a summary of HALO − GMP per setting included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haloprune.cli import main
from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.sweep import expand
from tests.helpers import MATRIX_CONFIGS

CONFIGS = sorted(MATRIX_CONFIGS.glob("*.toml"))


def test_every_setting_validates_and_compares_halo_with_gmp() -> None:
    assert len(CONFIGS) >= 7
    titles = set()
    for path in CONFIGS:
        cfg = load_sweep_config(path)
        assert cfg.compare == ("halo", "gmp") and cfg.title, path.name
        titles.add(cfg.title)
        assert cfg.seeds == [0, 1, 2], path.name
        lenet = cfg.model.name.startswith("lenet")
        assert cfg.sparsities == [0.9, 0.95, 0.98, 0.99] + ([0.995] if lenet else []), path.name
        assert cfg.methods["halo"].kind == "target" and cfg.methods["gmp"].kind == "gmp"
        jobs = expand(cfg)
        assert len({j.key for j in jobs}) == len(jobs)
        # HALO in its defaults: one run per target, the control written into the job (the exact one)
        halo = [j for j in jobs if j.method == "halo"]
        assert {j.spec.params["penalty"]["target_control"] for j in halo} == {"exact"}
        assert len(halo) == len(cfg.seeds) * len(cfg.sparsities)
    assert len(titles) == len(CONFIGS)


def test_the_quick_matrix_runs_with_one_command_and_reports_with_another(
    tmp_path: Path, real_fmnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "results.sqlite"
    common = ["--quick", "--set", f"db='{db}'"]
    assert main(["sweep", *map(str, CONFIGS), *common, "--quiet", "--jobs", "2"]) == 0
    capsys.readouterr()
    summary = tmp_path / "summary.md"
    assert main(["report", *map(str, CONFIGS), *common, "--summary", str(summary)]) == 0
    text = summary.read_text()
    assert text in capsys.readouterr().out
    lines = [line for line in text.splitlines() if "(halo − gmp)" in line]
    assert len(lines) == len(CONFIGS)
    for path, line in zip(CONFIGS, lines, strict=True):
        cfg = load_sweep_config(path, quick=True)
        assert line.startswith(f"| {cfg.title} (halo − gmp) | ")
        (cell,) = line.split(" | ")[1:-1]  # one target at the quick scale, then the seeds
        mean, low, high = (float(x.strip("[],").replace("−", "-")) for x in cell.split())
        records = json.loads((tmp_path / cfg.name / "results.json").read_text())
        acc = {r["method"]: r["accuracy"] for r in records if r["sparsity"] == cfg.sparsities[0]}
        assert mean == low == high == pytest.approx(acc["halo"] - acc["gmp"], abs=0.006)
        # HALO's run itself ends at the target (exact control), before the final pruning
        (halo,) = [r for r in records if r["method"] == "halo"]
        assert halo["trained_sparsity"] == pytest.approx(cfg.sparsities[0], abs=1e-3)
        assert all(r["achieved_sparsity"] == pytest.approx(r["sparsity"], abs=1e-3) for r in records)
        assert all(r["wall_seconds"] > 0 for r in records)
