"""Any combination of optimizer x penalty x target x scope x model x amp through ``haloprune train``: it
trains, or it stops with exit 2 and one ``haloprune: error:`` line — never a traceback."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haloprune.cli import main

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
