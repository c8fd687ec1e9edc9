"""The benchmark matrix (configs/matrix/, docs/results/matrix.md): every setting validates, and the whole
matrix runs at its ``--quick`` scale on real Fashion-MNIST and the torch-source corpus with one command,
then reports with one more, a summary of HALO − GMP per setting included (test accuracy for the image
settings, bits per byte for the byte-level GPT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haloprune.cli import main
from haloprune.data.datasets import DATASETS
from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.report import ACCURACY, BITS_PER_BYTE
from haloprune.experiments.sweep import expand
from tests.helpers import MATRIX_CONFIGS

CONFIGS = sorted(MATRIX_CONFIGS.glob("*.toml"))


def test_every_setting_validates_and_compares_halo_with_gmp() -> None:
    assert len(CONFIGS) >= 8
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
    # setting 8: a byte-level language model, its output head tied to the (dense) token embedding
    gpt = load_sweep_config(MATRIX_CONFIGS / "gpt-bytes.toml")
    assert (gpt.data.name, gpt.model.name, gpt.data.context_length) == ("torch-source", "gpt", 128)


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
    lines = [line for line in text.splitlines() if "(halo − gmp" in line]
    assert len(lines) == len(CONFIGS)
    for path in CONFIGS:
        cfg = load_sweep_config(path, quick=True)
        text_corpus = cfg.data.context_length is not None
        metric = BITS_PER_BYTE if text_corpus else ACCURACY  # the GPT's row: bits per byte, so it says
        label = "(halo − gmp, bits per byte: lower is better)" if text_corpus else "(halo − gmp)"
        (line,) = [line for line in lines if line.startswith(f"| {cfg.title} {label} | ")]
        (cell,) = line.split(" | ")[1:-1]  # one target at the quick scale, then the seeds
        mean, low, high = (float(x.strip("[],").replace("−", "-")) for x in cell.split())
        records = json.loads((tmp_path / cfg.name / "results.json").read_text())
        value = {r["method"]: r[metric.key] for r in records if r["sparsity"] == cfg.sparsities[0]}
        rounding = 0.6 * 10**-metric.decimals  # the cells' rounding, and the float parsing
        assert mean == low == high == pytest.approx(value["halo"] - value["gmp"], abs=rounding)
        # HALO's run itself ends at the target (exact control), before the final pruning
        (halo,) = [r for r in records if r["method"] == "halo"]
        assert halo["trained_sparsity"] == pytest.approx(cfg.sparsities[0], abs=1e-3)
        assert all(r["achieved_sparsity"] == pytest.approx(r["sparsity"], abs=1e-3) for r in records)
        assert all(r["wall_seconds"] > 0 for r in records)
        if text_corpus:  # the corpus every number is of
            assert {r["corpus_sha256"] for r in records} == {DATASETS["torch-source"].corpus.sha256}
