"""Configs are validated with one-line errors; the CLI exits 2 on bad input and never writes over a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from haloprune.cli import build_parser, main
from haloprune.config import TrainConfig, apply_overrides, load_config, to_toml
from haloprune.core.errors import ConfigError
from haloprune.data.datasets import DATASETS
from haloprune.experiments.config import SweepConfig, load_sweep_config


def test_defaults_and_overrides() -> None:
    cfg = load_config(
        TrainConfig,
        None,
        ["optim.epochs=3", "penalty.name=halo", "penalty.xi=1e-6", "prune.sparsities=[0.9, 0.5]", "name=abc"],
    )
    assert cfg.optim.epochs == 3 and cfg.penalty.name == "halo" and cfg.penalty.xi == 1e-6
    assert cfg.prune.sparsities == [0.5, 0.9]
    assert cfg.run_dir == Path("runs/abc")


def test_resolved_config_round_trips_through_toml(tmp_path: Path) -> None:
    main_toml = Path(__file__).resolve().parent.parent / "configs" / "main.toml"
    cfg = load_sweep_config(main_toml, ["optim.lr=0.05", "methods.gmp.params={every=50}"])
    assert set(cfg.methods) == {"halo", "gmp", "magnitude-ft", "dense"}  # --set edits one method only
    assert cfg.methods["gmp"].params == {"every": 50} and cfg.optim.lr == 0.05
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load_sweep_config(path) == cfg


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["optim.epochs=0"], "optim.epochs"),
        (["optim.lr=-1"], "optim.lr"),
        (["penalty.xi=-1e-3"], "penalty.xi"),
        (["optim.epochs='many'"], "optim.epochs"),
        (["optim.epochz=3"], "optim.epochz: unknown key"),
        (["prune.sparsities=[1.0]"], "prune.sparsities"),
        (["prune.sparsities=[]"], "at least one"),
        (["model.name=resnet-9000"], "unknown model"),
        (["data.name=imagenet"], "data.name"),
        (["name=../escape"], "name"),
    ],
)
def test_invalid_configs_give_one_line(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, overrides)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_dataset_names_come_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    for name in DATASETS:
        assert load_config(TrainConfig, None, [f"data.name={name}"]).data.name == name
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, ["data.name=imagenet"])
    assert "'imagenet'" in str(err.value) and ", ".join(sorted(DATASETS)) in str(err.value)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "check", "imagenet"])
    err_text = capsys.readouterr().err
    assert all(name in err_text for name in DATASETS)
    for name in DATASETS:
        assert build_parser().parse_args(["data", "check", name]).dataset == name


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"optim": 3}, ["optim.lr=1"])


def test_a_sweep_takes_no_prune_sparsities_and_a_file_replaces_the_method_list(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not prune\.sparsities"):
        load_config(SweepConfig, None, ["methods={m={kind='gmp'}}", "prune.sparsities=[0.9]"])
    with pytest.raises(ConfigError, match="at least one method"):
        load_config(SweepConfig, None, ["methods={}"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(SweepConfig, None, ["methods={m={kind='gmp'}}", "out_dir='x'"])  # not a sweep setting
    only = tmp_path / "only.toml"
    only.write_text("[methods.halo]\nkind = 'target'\nparams = {penalty = {name = 'halo'}}\n")
    assert set(load_config(SweepConfig, only).methods) == {"halo"}


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_cli_bad_config_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nepochs = 'x'\nfoo = 1\n")
    code, err = _run_cli(["train", "--config", str(bad)], capsys)
    assert code == 2
    assert err.startswith("haloprune: error: invalid config") and err.count("\n") == 1
    (tmp_path / "broken.toml").write_text("[optim\n")
    code, err = _run_cli(["train", "--config", str(tmp_path / "broken.toml")], capsys)
    assert code == 2 and "not valid TOML" in err
    code, err = _run_cli(["train", "--config", str(tmp_path / "missing.toml")], capsys)
    assert code == 2 and "does not exist" in err


def test_cli_missing_data_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run_cli(
        ["train", "--data-dir", str(tmp_path / "nowhere"), "--set", f"out_dir='{tmp_path}'", "--quiet"],
        capsys,
    )
    assert code == 2
    assert "fashion-mnist" in err and err.count("\n") == 1


def test_cli_corrupt_data_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], real_fmnist: Path
) -> None:
    data = tmp_path / "fm"
    data.mkdir()
    for f in real_fmnist.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    blob = (data / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (data / "t10k-labels-idx1-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    code, err = _run_cli(["data", "check", "fashion-mnist", "--data-dir", str(data)], capsys)
    assert code == 2 and "t10k-labels" in err and err.count("\n") == 1


def test_cli_refuses_to_overwrite_a_different_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.toml").write_text("name = 'r'\n")
    (run / "model.pt").write_bytes(b"precious")
    code, err = _run_cli(["train", "--name", "r", "--set", f"out_dir='{tmp_path}'", "--quiet"], capsys)
    assert code == 2 and "different config" in err
    assert (run / "model.pt").read_bytes() == b"precious"


def test_cli_prune_on_non_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run_cli(["prune", str(tmp_path), "--sparsity", "0.9"], capsys)
    assert code == 2 and "not a haloprune run directory" in err
    code, err = _run_cli(["prune", str(tmp_path), "--sparsity", "1.5"], capsys)
    assert code == 2 and "[0, 1)" in err
    code, err = _run_cli(["prune", str(tmp_path), "--sparsity", "0.9", "--recalibrate-bn", "-5"], capsys)
    assert code == 2 and "--recalibrate-bn must be >= 0" in err
