"""Configs (haloprune.config): defaults and overrides, TOML round trip, one-line errors for invalid or
fuzzed configs and for keys that do not apply, scopes that must agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haloprune.cli import build_parser
from haloprune.config import OptimConfig, PenaltyConfig, TrainConfig, apply_overrides, load_config, to_toml
from haloprune.core.errors import ConfigError
from haloprune.data.datasets import DATASETS
from haloprune.experiments.config import SweepConfig, load_sweep_config
from haloprune.penalties import HALO, L1, PENALTIES, build_penalty
from tests.helpers import conv_net


def test_a_config_key_that_does_not_apply_is_an_error() -> None:
    with pytest.raises(ValueError, match="psi does not apply to penalty 'l1'"):
        PenaltyConfig(name="l1", xi=1e-4, psi=1.0)
    with pytest.raises(ValueError, match="betas"):
        OptimConfig(optimizer="sgd", betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="nesterov"):
        OptimConfig(optimizer="adamw", nesterov=True)
    with pytest.raises(ValueError, match="momentum is an SGD setting"):
        OptimConfig(optimizer="adam", momentum=0.5)
    assert OptimConfig(optimizer="adamw").momentum == 0.9  # the default is accepted: one key switches


def test_penalty_and_pruning_scope_must_agree() -> None:
    halo_sets = ['prune.scope="conv"', "penalty.name=halo", "penalty.xi=1e-6", "penalty.psi=1e-3"]
    with pytest.raises(ConfigError, match=r"penalty.scope is 'all' but prune.scope is 'conv'"):
        load_config(TrainConfig, None, halo_sets)
    ok = load_config(TrainConfig, None, [*halo_sets, 'penalty.scope="conv"'])
    assert ok.prune.scope == "conv"
    halo = 'methods.h={kind="penalty", params={penalty={name="halo", xi=1e-6, psi=1e-3}}}'
    with pytest.raises(ConfigError, match=r"methods\.h: penalty\.scope"):
        load_config(SweepConfig, None, ['prune.scope="conv"', halo])


def test_new_fields_at_defaults_leave_old_dumps_unchanged() -> None:
    """Old run directories (config.toml compared as text) and sweep job keys stay valid."""
    text = to_toml(TrainConfig())
    for field in ("width", "pad_to", "augment", "amp", "channels_last", 'scope = "all"\n\n[penalty]'):
        assert field not in text
    sweep = load_config(SweepConfig, None, ['methods.d={kind="penalty"}'])
    assert "prune" not in sweep.run_part() and "width" not in sweep.run_part()["model"]
    conv = load_config(SweepConfig, None, ['methods.d={kind="penalty"}', 'prune.scope="conv"'])
    assert conv.run_part()["prune"] == {"scope": "conv"}


_KEYS = [
    "name",
    "seed",
    "optim.epochs",
    "optim.lr",
    "optim.momentum",
    "optim.schedule",
    "penalty.name",
    "penalty.xi",
    "penalty.psi",
    "penalty.form",
    "prune.sparsities",
    "data.val_size",
    "model.name",
    "bogus",
    "optim.bogus",
    "penalty",
]


_VALUES = [
    "0",
    "-1",
    "1e-3",
    "1.5",
    "'x'",
    "true",
    "[]",
    "[0.5, 1.0]",
    "[-0.1]",
    "{a=1}",
    "'halo'",
    "'l2'",
    "nan",
    "inf",
    "99999999999999999999",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KEYS), st.sampled_from(_VALUES)), max_size=4))
def test_fuzzed_configs_are_valid_or_one_clear_config_error(pairs: list[tuple[str, str]]) -> None:
    from haloprune.config import TrainConfig, load_config
    from haloprune.core.errors import ConfigError

    try:
        load_config(TrainConfig, None, [f"{k}={v}" for k, v in pairs])
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)


def test_defaults_and_overrides() -> None:
    cfg = load_config(
        TrainConfig,
        None,
        [
            "optim.epochs=3",
            "penalty.name=halo",
            "penalty.xi=1e-6",
            "penalty.psi=1e-3",
            "prune.sparsities=[0.9, 0.5]",
            "name=abc",
        ],
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


HALO_SETS = ["penalty.name=halo", "penalty.xi=1e-4", "penalty.psi=1"]


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
        (["optim.schedule=step", "optim.milestones=[2, 4]", "optim.gamma=[0.1]"], "one per milestone"),
        (["optim.gamma=[1.5]", "optim.milestones=[2]"], "optim.gamma"),
        (["optim.milestone_unit=steps"], "optim.milestone_unit"),
        (["optim.keep=best"], "optim.keep"),
        (["data.normalize=imagenet"], "data.normalize"),
        (["prune.of=nonzeros"], "prune.of"),
        (["prune.zero_below=-1"], "prune.zero_below"),
        (
            ["penalty.name=l1", "penalty.xi=1e-4", "penalty.lambda_schedule=constant"],
            "does not apply to penalty 'l1'",
        ),
        (
            ["penalty.name=halo", "penalty.xi=1e-4", "penalty.psi=1", "penalty.lambda_gamma=0.1"],
            "optim.schedule 'step'",
        ),
        (
            [
                *HALO_SETS,
                "penalty.lambda_gamma=0.1",
                "penalty.lambda_schedule=constant",
                "optim.schedule=step",
            ],
            "lambda_schedule 'follow'",
        ),
        (
            [*HALO_SETS, "penalty.lambda_gamma=[0.1, 0.1]", "optim.schedule=step", "optim.milestones=[3]"],
            "optim has 1 milestones",
        ),
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


NO_OP = [
    (["penalty.name=halo"], "'halo' with xi = psi = 0 and no target_sparsity cannot act"),
    (["penalty.name=halo", "penalty.xi=1e-6"], "'halo' with psi = 0 and no target_sparsity cannot act"),
    (["penalty.name=halo", "penalty.psi=1e-3"], "'halo' with xi = 0 and no target_sparsity cannot act"),
    (["penalty.name=l1"], "'l1' with xi = 0 cannot act: give xi"),
    (["penalty.name=l1", "penalty.xi=0"], "'l1' with xi = 0 cannot act: give xi"),
    (["penalty.name=adaptive-lasso"], "'adaptive-lasso' with xi = 0 cannot act"),
    (["penalty.name=mcp", "penalty.xi=1e-3"], "'mcp' with psi = 0 cannot act: give xi and psi"),
    (["penalty.name=scad"], "'scad' with xi = 0 cannot act"),
    (["penalty.name=sws", "penalty.psi=1"], "'sws' with xi = 0 cannot act: give xi and psi"),
    (["penalty.name=group-halo", "penalty.xi=1e-3"], "'group-halo' with psi = 0 cannot act"),
]


@pytest.mark.parametrize(("overrides", "fragment"), NO_OP)
def test_a_penalty_that_cannot_act_is_one_config_error(overrides: list[str], fragment: str) -> None:
    """No silent no-op: a penalty whose strength is 0 is refused (saying what to give), not trained as a
    run that is reported under the penalty's name."""
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, overrides)
    assert f"penalty: {fragment}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # no penalty
        ["penalty.name=halo", "penalty.xi=1e-6", "penalty.psi=1e-3"],
        ["penalty.name=halo", "penalty.target_sparsity=0.9"],  # target mode sets xi and psi itself
        ["penalty.name=l1", "penalty.xi=1e-5"],
        ["penalty.name=mcp", "penalty.xi=1e-3", "penalty.psi=100"],
        ["penalty.name=group-lasso", "penalty.xi=1e-4"],
    ],
)
def test_a_penalty_that_acts_is_accepted(overrides: list[str]) -> None:
    load_config(TrainConfig, None, overrides)


@pytest.mark.parametrize("name", PENALTIES.names())
def test_config_and_constructor_refuse_the_same_no_op(name: str) -> None:
    """One rule (the class's ``cannot_act``) for the config and the Python API: every registered penalty
    with its strengths left at 0 is refused by both, and given them, accepted by both."""
    cls = PENALTIES[name]
    off = PenaltyConfig(name=name).kwargs()
    assert cls.cannot_act(off) is not None
    with pytest.raises(ValueError):
        build_penalty(name, conv_net(), **off)
    with pytest.raises(ConfigError, match=f"'{name}' with .* cannot act"):
        load_config(TrainConfig, None, [f"penalty.name={name}"])
    strengths = {k: 1e-3 for k in cls.strengths}
    on = PenaltyConfig(name=name, **strengths)
    assert cls.cannot_act(on.kwargs()) is None
    assert build_penalty(name, conv_net(), **on.kwargs())
    assert load_config(TrainConfig, None, [f"penalty.name={name}", *(f"penalty.{k}=1e-3" for k in strengths)])


def test_the_python_api_says_what_to_give() -> None:
    model = conv_net()
    with pytest.raises(ValueError, match="give xi and psi, or target_sparsity"):
        HALO(model)
    with pytest.raises(ValueError, match=r"HALO with xi = psi = 0 and no target_sparsity cannot act"):
        HALO(model, xi=0.0, psi=0.0)
    with pytest.raises(ValueError, match=r"HALO with psi = 0 and no target_sparsity cannot act"):
        HALO(model, xi=1e-6, psi=0.0)
    with pytest.raises(ValueError, match=r"L1 with xi = 0 cannot act: give xi$"):
        L1(model, xi=0.0)
    assert HALO(model, target_sparsity=0.9).xi == 0.0  # target mode sets ξ and ψ itself


@pytest.mark.parametrize(
    "bad",
    [
        {"target_sparsity": 0.9, "xi": 1e-4},
        {"target_sparsity": 0.9, "fused": False},
        {"xi": 1e-4, "psi": 1e-3, "prox": True, "fused": False},
        {"xi": 1e-4, "psi": 1e-3, "lambda_min": 2.0},
        {"xi": 1e-4, "psi": 1e-3, "lambda_dtype": "bfloat16", "fused": False},
        {"target_sparsity": 0.9, "coupling": "coupled"},
        {"target_sparsity": 0.9, "ramp_end": 1.0, "psi_hat": 5.0, "lambda_init": 1e4},
        {"xi": 1e-4, "psi": 1e-3, "target_control": "exact"},
    ],
    ids=str,
)
def test_halo_rules_are_the_same_in_python_and_in_a_config(bad: dict) -> None:
    """One rule, written where the penalty is defined (``HALO.check_options``): the constructor and a
    config refuse the same settings with the same words."""
    import torch

    from haloprune import HALO

    with pytest.raises(ValueError) as python:
        HALO(torch.nn.Linear(4, 3), **bad)
    overrides = ['penalty.name="halo"'] + [f"penalty.{k}={v!r}".replace("'", '"') for k, v in bad.items()]
    overrides = [o.replace("=False", "=false").replace("=True", "=true") for o in overrides]
    with pytest.raises(ConfigError) as config:
        load_config(TrainConfig, None, overrides)
    assert str(python.value).split(":")[0] in str(config.value)


def test_penalty_config_defaults_are_the_penalties_own() -> None:
    from haloprune.penalties import PENALTIES

    for name in PENALTIES.names():
        for key, default in PENALTIES[name].defaults().items():
            field = PenaltyConfig.model_fields.get(key)
            if field is not None and key not in ("xi", "psi"):  # 0 means "not given" in a config
                assert field.get_default() == default, (name, key)
