"""Job expansion (haloprune.experiments.sweep) and `haloprune sweep --quick` + `haloprune report` end to end
on real Fashion-MNIST (CI scale)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from haloprune.cli import main
from haloprune.data import datasets
from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.sweep import expand
from haloprune.methods import METHODS
from tests.helpers import PAPER_CONFIGS


def test_paper_config_expands_with_stable_unique_keys() -> None:
    cfg = load_sweep_config(PAPER_CONFIGS / "fmnist-lenet300.toml")
    jobs = expand(cfg)
    assert len({j.key for j in jobs}) == len(jobs)
    assert [j.key for j in expand(cfg)] == [j.key for j in jobs]
    per_target = {j.method for j in jobs if j.sparsity is not None}
    assert per_target == {"gmp", "imp", "imp-reinit", "snip", "random"}
    quick = load_sweep_config(PAPER_CONFIGS / "fmnist-lenet300.toml", quick=True)
    assert quick.name.endswith("-quick") and quick.optim.epochs == 2 and quick.seeds == [0]
    assert all(len(m.grid) <= 1 for m in quick.methods.values())


def test_target_halo_jobs_record_the_control_they_run_with(tmp_path: Path) -> None:
    """Target-mode HALO's control became "exact" by default: a job left to the default records it in its
    key (the same job as one that names "exact"), so a store's result of the old "pi" default is never
    taken for it."""
    config = tmp_path / "c.toml"
    config.write_text(
        'name = "c"\nsparsities = [0.9]\nseeds = [0]\n[model]\nname = "lenet-300-100"\n'
        '[methods.default]\nkind = "target"\nparams = { penalty = { name = "halo" } }\n'
        '[methods.exact]\nkind = "target"\n'
        'params = { penalty = { name = "halo", target_control = "exact" } }\n'
        '[methods.pi]\nkind = "target"\nparams = { penalty = { name = "halo", target_control = "pi" } }\n'
        '[methods.l1]\nkind = "penalty"\nparams = { penalty = { name = "l1", xi = 1e-4 } }\n'
    )
    jobs = {j.method: j for j in expand(load_sweep_config(config))}
    controls = {m: j.spec["params"]["penalty"].get("target_control") for m, j in jobs.items()}
    assert controls == {"default": "exact", "exact": "exact", "pi": "pi", "l1": None}
    assert jobs["default"].result_spec() == jobs["exact"].result_spec() != jobs["pi"].result_spec()
    assert jobs["default"].hyperparameters == {}


def test_target_halo_jobs_with_adam_record_the_shrinkage_bound(tmp_path: Path) -> None:
    """``max_shrink`` became 10 by default for the exact control with Adam/AdamW: such a job left to the
    default records it in its key (the same job as one that names 10: a store's run of that is taken
    over, one of the old unbounded default is not); with SGD, or the PI control, where the bound does not
    act, the key is as before."""
    config = tmp_path / "c.toml"
    halo = 'kind = "target"\nparams = { penalty = { name = "halo"'
    config.write_text(
        'name = "c"\nsparsities = [0.9]\nseeds = [0]\n[model]\nname = "lenet-300-100"\n'
        '[optim]\noptimizer = "adamw"\nlr = 1e-3\nmomentum = 0.0\n'
        f"[methods.default]\n{halo} }} }}\n"
        f"[methods.ten]\n{halo}, max_shrink = 10.0 }} }}\n"
        f"[methods.loose]\n{halo}, max_shrink = 100.0 }} }}\n"
        f'[methods.pi]\n{halo}, target_control = "pi" }} }}\n'
        f'[methods.sgd]\n{halo} }} }}\noptim = {{ optimizer = "sgd", lr = 0.1, momentum = 0.9 }}\n'
        f"[methods.free]\n{halo}, max_shrink = inf }} }}\n"
        f"[methods.grid]\n{halo} }} }}\ngrid = [{{ penalty = {{ max_shrink = inf }} }}]\n"
    )
    jobs = {j.method: j for j in expand(load_sweep_config(config))}
    assert jobs.pop("grid").hyperparameters == {"penalty": {"max_shrink": "inf"}}  # a grid's value too
    bounds = {m: j.spec["params"]["penalty"].get("max_shrink") for m, j in jobs.items()}
    assert bounds == {"default": 10.0, "ten": 10.0, "loose": 100.0, "pi": None, "sgd": None, "free": "inf"}
    assert jobs["default"].result_spec() == jobs["ten"].result_spec() != jobs["loose"].result_spec()
    # the unbounded shrinkage in a sweep: a key in strict JSON, the same float where the method reads it
    free = METHODS["target"](**jobs["free"].spec["params"])
    assert free.params.penalty.max_shrink == math.inf


CONFIG = Path(__file__).resolve().parents[2] / "configs" / "paper" / "fmnist-lenet300.toml"


@pytest.mark.slow
def test_quick_sweep_then_report(
    tmp_path: Path, real_fmnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "results.sqlite"
    args = ["sweep", str(CONFIG), "--quick", "--quiet", "--set", f"db='{db}'", "--jobs", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| method | 90% | 98% | epochs |" in out
    folder = tmp_path / "fmnist-lenet300-quick"
    for name in (
        "report.md",
        "results.json",
        "accuracy_vs_sparsity.png",
        "layer_sparsity.png",
        "eigen_spectrum.png",
    ):
        assert (folder / name).stat().st_size > 0, name
    records = json.loads((folder / "results.json").read_text())
    methods = {r["method"] for r in records}
    assert {"magnitude", "magnitude-ft", "gmp", "imp", "snip", "random", "sparsevd", "l1", "halo"} <= methods
    assert all(r["epochs_used"] == 2 for r in records), "every method gets the same budget"
    # A rerun does nothing new; the report can be printed as JSON.
    assert main(args) == 0
    assert "done 0, skipped" in capsys.readouterr().out
    assert main(["report", "--db", str(db), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"method", "sparsity", "seed", "accuracy"} <= set(printed[0])


DENSE = """
name = "dense"
seeds = [0]
sparsities = [0.9]
db = "{db}"
data = {{ train_subset = 1000, val_size = 200, test_subset = 200 }}
optim = {{ epochs = 1 }}
methods.dense = {{ kind = "penalty", params = {{ penalty = {{ name = "none" }} }} }}
"""


def test_data_dir_reaches_the_jobs_and_the_report(
    tmp_path: Path, real_fmnist: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--data-dir` travels to the jobs as a worker setting (it never changes a key): with no other place
    to find the data, the sweep fails without it and runs with it, its report's figures too."""
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIRS", {"fashion-mnist": tmp_path / "absent"})
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("HALOPRUNE_DATA", raising=False)
    config = tmp_path / "dense.toml"
    config.write_text(DENSE.format(db=tmp_path / "results.sqlite"))
    assert main(["sweep", str(config), "--quiet"]) == 1
    assert "fashion-mnist data not found" in capsys.readouterr().err
    assert main(["sweep", str(config), "--quiet", "--data-dir", str(real_fmnist)]) == 0
    assert "done 1, skipped 0" in capsys.readouterr().out
    assert (tmp_path / "dense" / "layer_sparsity.png").stat().st_size > 0  # drawn from the data


@pytest.mark.slow
def test_target_control_benchmark_quick_runs_and_lands_on_the_target(
    tmp_path: Path, real_fmnist: Path
) -> None:
    """configs/paper/fmnist-lenet300-target-control.toml --quick: every method runs; the exact control's
    runs end at the target before the final pruning (within ±0.1%)."""
    config = Path(__file__).resolve().parents[2] / "configs" / "paper" / "fmnist-lenet300-target-control.toml"
    db = tmp_path / "results.sqlite"
    args = ["sweep", str(config), "--quick", "--quiet", "--set", f"db='{db}'", "--jobs", "2"]
    assert main(args) == 0
    records = json.loads((tmp_path / "fmnist-lenet300-target-control-quick" / "results.json").read_text())
    by_method = {r["method"]: r for r in records}
    assert set(by_method) == {"halo-pi", "halo-exact", "gmp", "halo-pi-sgd", "halo-exact-sgd", "gmp-sgd"}
    for name in ("halo-exact", "halo-exact-sgd"):
        assert by_method[name]["trained_sparsity"] == pytest.approx(0.95, abs=1e-3)
    assert all(r["achieved_sparsity"] == pytest.approx(0.95, abs=1e-4) for r in records)
