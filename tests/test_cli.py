"""The CLI: any combination of optimizer x penalty x target x scope x model x amp through ``haloprune train``
trains or stops with exit 2 and one ``haloprune: error:`` line — never a traceback; bad files and data exit
2; a run is never written over."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haloprune.cli import main


def test_an_empty_selection_is_a_one_line_cli_error(real_fmnist, tmp_path, capsys) -> None:
    from haloprune.cli import main

    args = ["train", "--data-dir", str(real_fmnist), "--quiet", "--set", f"out_dir='{tmp_path}'"]
    args += ["--set", "penalty.name='l1'", "--set", "penalty.xi=1e-5", "--set", "penalty.scope='conv'"]
    args += ["--set", "prune.scope='conv'", "--set", "data.train_subset=200", "--epochs", "1"]
    assert main(args) == 2  # LeNet-300-100 has no convolutions
    err = capsys.readouterr().err
    assert err.startswith("haloprune: error: LeNet") and "scope='conv'" in err and err.count("\n") == 1


def test_resume_needs_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--resume", str(tmp_path / "nothing")])
    assert (code == 2 and "nothing to resume" in capsys.readouterr().err) or code == 2


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


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (['penalty.name="halo"'], "'halo' with xi = psi = 0 and no target_sparsity cannot act"),
        (["penalty.name='halo'", "penalty.xi=1e-6"], "'halo' with psi = 0"),
        (["penalty.name='l1'"], "'l1' with xi = 0 cannot act: give xi"),
        (["penalty.name='l1'", "penalty.xi=0"], "'l1' with xi = 0 cannot act: give xi"),
    ],
)
def test_a_penalty_that_cannot_act_is_one_line_exit_2(
    sets: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No silent no-op: ``penalty.name = "halo"`` without ξ, ψ or target_sparsity once trained with
    ξ = ψ = 0 and was reported as a HALO run. Refused before any data is read or run folder written."""
    args = ["train", "--quiet", "--data-dir", str(tmp_path / "nowhere"), "--set", f"out_dir='{tmp_path}'"]
    for s in sets:
        args += ["--set", s]
    code, err = _run_cli(args, capsys)
    assert code == 2, err
    assert err.startswith("haloprune: error: invalid config") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_penalty_that_acts_gets_past_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same command with ξ and ψ given is a valid config: it stops only at the missing data."""
    args = ["train", "--quiet", "--data-dir", str(tmp_path / "nowhere"), "--set", f"out_dir='{tmp_path}'"]
    for s in ["penalty.name='halo'", "penalty.xi=1e-6", "penalty.psi=1e-3"]:
        args += ["--set", s]
    code, err = _run_cli(args, capsys)
    assert code == 2 and "invalid config" not in err and "fashion-mnist" in err, err


COMBOS = st.fixed_dictionaries(
    {
        "optim.optimizer": st.sampled_from(["sgd", "adam", "adamw"]),
        "penalty.name": st.sampled_from(["none", "l1", "halo"]),
        "penalty.target_sparsity": st.sampled_from([None, 0.9]),
        "penalty.coupling": st.sampled_from([None, "coupled", "decoupled"]),
        "penalty.scope": st.sampled_from(["all", "linear", "conv"]),
        "prune.scope": st.sampled_from(["same", "same", "same", "all", "linear"]),  # mostly consistent
        "model.name": st.sampled_from(["lenet-300-100", "lenet-5"]),
        "optim.amp": st.sampled_from(["none", "bf16"]),
    }
)


_count = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(combo=COMBOS)
def test_every_combination_trains_or_gives_one_line(
    combo: dict, tmp_path: Path, real_fmnist: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.setenv("HALOPRUNE_COMPILE", "0")
    if combo["prune.scope"] == "same":
        combo = {**combo, "prune.scope": combo["penalty.scope"]}
    sets = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in combo.items() if v is not None]
    if combo["penalty.name"] == "halo" and combo["penalty.target_sparsity"] is None:
        sets += ["penalty.xi=1e-6", "penalty.psi=1e-3"]
    if combo["penalty.name"] == "l1":
        sets += ["penalty.xi=1e-5"]
    if combo["optim.optimizer"] != "sgd":
        sets += ["optim.lr=1e-3", "optim.momentum=0.0"]
    args = ["train", "--data-dir", str(real_fmnist), "--quiet", "--name", f"c{next(_count)}"]
    args += ["--set", f"out_dir='{tmp_path}'", "--epochs", "1"]
    args += ["--set", "data.train_subset=300", "--set", "data.val_size=100", "--set", "data.test_subset=100"]
    for s in sets:
        args += ["--set", s]
    code = main(args)
    err = capsys.readouterr().err
    assert code in (0, 2), (combo, err)
    if code == 2:
        assert err.startswith("haloprune: error:") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_train_with_keep_best_test_says_which_epoch_it_kept(real_fmnist, tmp_path, capsys) -> None:
    args = ["train", "--data-dir", str(real_fmnist), "--quiet", "--set", f"out_dir='{tmp_path}'"]
    small = ["data.train_subset=300", "data.val_size=100", "data.test_subset=200", "optim.epochs=2"]
    sets = [x for s in [*small, "optim.keep='best-test'"] for x in ("--set", s)]
    assert main([*args, *sets]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["test_accuracy"])
    acc = best["test_accuracy"]
    assert f"kept the weights of epoch {best['epoch']}: best test accuracy {acc:.2f}%" in out


def test_sweep_gives_its_workers_their_settings_in_the_task_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`haloprune sweep` hands run_sweep the worker settings a Python caller gets from worker_settings:
    --data-dir (else the driver's $HALOPRUNE_DATA), --quiet, [logging]; it sets no environment variable."""
    import haloprune.cli as cli
    from haloprune.experiments.config import load_sweep_config
    from haloprune.experiments.sweep import worker_settings
    from tests.helpers import REPO

    given: list[Any] = []

    def run_sweep(jobs: list[Any], run_job: Any, store: Any, **kw: Any) -> dict[str, Any]:
        given.append(kw["settings"])
        return dict.fromkeys(("done", "skipped", "reused", "attached", "retried", "wall_seconds"), 0) | {
            "failed": []
        }

    monkeypatch.setattr(cli, "run_sweep", run_sweep)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HALOPRUNE_DATA", "from-env")
    environ = dict(os.environ)
    config = REPO / "configs" / "main.toml"
    assert main(["sweep", str(config), "--quick", "--quiet", "--data-dir", "given"]) == 0
    assert main(["sweep", str(config), "--quick", "--set", "logging.project='p'"]) == 0
    assert dict(os.environ) == environ
    quiet, logged = given
    assert (quiet.data_dir, quiet.progress, quiet.log_dir) == ("given", False, "runs")
    cfg = load_sweep_config(config, ["logging.project='p'"], quick=True)
    assert logged == worker_settings(cfg) and logged.data_dir == "from-env" and logged.logging.project == "p"


def test_sweep_and_report_take_several_configs_and_refuse_what_cannot_be_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        f'name = "g"\ndb = "{tmp_path / "r.sqlite"}"\ncompare = ["halo", "gmp"]\n'
        '[model]\nname = "lenet-300-100"\n[methods.gmp]\nkind = "gmp"\n'
        '[methods.halo]\nkind = "target"\nparams = { penalty = { name = "halo" } }\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('compare = ["halo", "gmp"]', 'compare = ["halo", "imp"]'))
    # a bad config among several stops the command before anything runs (no store is made)
    code, err = _run_cli(["sweep", str(good), str(bad)], capsys)
    assert code == 2 and "compare: give two different methods of this sweep (gmp, halo)" in err
    assert err.count("\n") == 1 and not (tmp_path / "r.sqlite").exists()
    code, err = _run_cli(["report", str(good), "--sweep", "g"], capsys)
    assert code == 2 and "not both" in err
    code, err = _run_cli(["report", "--summary", str(tmp_path / "s.md")], capsys)
    assert code == 2 and "name them" in err


def test_a_reader_that_goes_away_stops_the_output_quietly(tmp_path: Path) -> None:
    """``haloprune sweep ... --status | head``: the pipe closed before the output is written is no
    traceback (it was one: BrokenPipeError)."""
    import subprocess
    import sys

    from haloprune.experiments.store import ResultStore

    ResultStore(tmp_path / "store.sqlite")  # an empty store: every job queued
    config = Path(__file__).resolve().parents[1] / "configs" / "main.toml"
    cmd = ["sweep", str(config), "--status", "--set", f"db='{tmp_path / 'store.sqlite'}'"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "haloprune", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the child has started writing (it takes a second to import)
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode in (0, 141)


def test_shipped_configs_are_found_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The configs ship inside the package: `haloprune configs` lists them, and a command given
    `configs/...` (or the name under it) outside a checkout reads the shipped file; a local file of
    that name wins; a name that is neither is one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out
    assert "configs/main.toml" in listed and "configs/matrix/lenet300-sgd.toml" in listed
    for name in ("configs/main.toml", "main.toml"):
        assert main(["run", "--config", name, "--status", "--set", "db='x.sqlite'"]) == 2
        assert "no results store at x.sqlite" in capsys.readouterr().err  # read: got as far as the store
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "main.toml").write_text("not toml [")
    assert main(["run", "--status"]) == 2
    assert "not valid TOML" in capsys.readouterr().err  # the local file, not the shipped one
    assert main(["sweep", "nope.toml", "--status"]) == 2
    assert capsys.readouterr().err.strip() == "haloprune: error: config file nope.toml does not exist"
