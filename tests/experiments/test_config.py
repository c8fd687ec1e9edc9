"""Sweep configs (haloprune.experiments.config): validation messages, the shipped paper configs and their
quick scale, what a sweep refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from haloprune.config import load_config
from haloprune.core.errors import ConfigError
from haloprune.experiments.config import SweepConfig, load_sweep_config
from haloprune.experiments.sweep import expand
from tests.helpers import PAPER_CONFIGS


def test_sweep_config_validation_messages() -> None:
    from haloprune.core.errors import ConfigError

    base = ["methods={m={kind='penalty'}}"]
    load_config(SweepConfig, None, base)
    with pytest.raises(ConfigError, match="unknown method kind"):
        load_config(SweepConfig, None, ["methods={m={kind='nope'}}"])
    with pytest.raises(ConfigError, match="grid point 0"):
        load_config(SweepConfig, None, ["methods={m={kind='gmp', grid=[{every=0}]}}"])
    with pytest.raises(ConfigError, match="unknown penalty"):
        load_config(SweepConfig, None, ["methods={m={kind='penalty', params={penalty={name='l7'}}}}"])


@pytest.mark.parametrize("path", sorted(PAPER_CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_paper_config_and_its_quick_scale_validate(path: Path) -> None:
    full, quick = load_sweep_config(path), load_sweep_config(path, quick=True)
    assert expand(full) and expand(quick)
    assert quick.optim.epochs <= 2 < full.optim.epochs


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


def test_a_method_sets_its_own_optim_keys_and_jobs_carry_every_pruning_setting() -> None:
    """``methods.<m>.optim`` overrides the sweep's optim for that method's jobs only, is validated with it,
    and a job's run config carries the pruning settings (scope, include, exclude, of, zero_below) — a
    sweep's ``prune.include`` once did not reach its jobs, which pruned other weights than they penalised."""
    pen = "{name='halo', xi=1e-7, psi=1e-3, include=['*.bias']}"
    halo = f"m={{kind='penalty', params={{penalty={pen}}}, optim={{gamma=[0.1, 0.01]}}}}"
    dense = "d={kind='penalty', params={penalty={name='none'}}}"
    sets = [
        f"methods={{{halo}, {dense}}}",
        "optim.schedule=step",
        "optim.milestones=[1, 2]",
        "prune.include=['*.bias']",
        "prune.of=nonzero",
        "prune.zero_below=1e-5",
    ]
    cfg = load_config(SweepConfig, None, sets)
    jobs = {j.method: j.spec["run"] for j in expand(cfg)}
    assert jobs["m"]["optim"]["gamma"] == [0.1, 0.01] and jobs["d"]["optim"]["gamma"] == 0.1
    for run in jobs.values():
        assert run["prune"] == {"include": ["*.bias"], "of": "nonzero", "zero_below": 1e-5}
    with pytest.raises(ConfigError, match=r"methods\.m: optim: .*one per milestone"):
        load_config(SweepConfig, None, [*sets, "optim.milestones=[1]"])
    with pytest.raises(ConfigError, match=r"methods\.m: optim"):
        load_config(SweepConfig, None, ["methods={m={kind='gmp', optim={lrr=1}}}"])


def test_a_sweep_refuses_a_penalty_that_cannot_act_but_not_one_whose_grid_gives_its_strength() -> None:
    """No silent no-op in a sweep either: every grid point is checked as its jobs run it (the grid's ξ and
    ψ merged into params; a ``target`` method with the target_sparsity it sets per job)."""
    with pytest.raises(
        ConfigError, match=r"methods\.h: penalty 'halo' with xi = psi = 0 and no target_sparsity"
    ):
        load_config(SweepConfig, None, ["methods={h={kind='penalty', params={penalty={name='halo'}}}}"])
    l1 = "l={kind='penalty', params={penalty={name='l1'}}, grid=[{penalty={xi=1e-4}}, {penalty={xi=0.0}}]}"
    with pytest.raises(ConfigError, match=r"methods\.l: grid point 1: penalty 'l1' with xi = 0 cannot act"):
        load_config(SweepConfig, None, [f"methods={{{l1}}}"])
    ok = [
        "h={kind='penalty', params={penalty={name='halo', psi=1e-3}}, grid=[{penalty={xi=1e-7}}]}",
        "t={kind='target', params={penalty={name='halo'}}}",  # target_sparsity is set per job
        "d={kind='penalty', params={penalty={name='none'}}}",
        "g={kind='gmp'}",
    ]
    cfg = load_config(SweepConfig, None, [f"methods={{{', '.join(ok)}}}"])
    assert set(cfg.methods) == {"h", "t", "d", "g"} and expand(cfg)
    with pytest.raises(ConfigError, match=r"methods\.t: penalty 'l1' with xi = 0"):  # target mode is HALO's
        load_config(SweepConfig, None, ["methods={t={kind='target', params={penalty={name='l1'}}}}"])
