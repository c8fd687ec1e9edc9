"""Pruning methods (haloprune.methods): rewinding, scores, budgets, what each method records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from haloprune.build import load_data
from haloprune.config import RunConfig, load_config
from haloprune.core.errors import HaloPruneError
from haloprune.data import SplitData
from haloprune.data.datasets import DATASETS
from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.sweep import expand
from haloprune.methods import METHODS, Context
from haloprune.methods.at_init import snip_scores
from haloprune.methods.magnitude import rewind_
from haloprune.models import build_model
from haloprune.pruning import masks_from_scores
from haloprune.pruning.masks import attach_mask, get_masks
from tests.helpers import PAPER_CONFIGS, TINY_GPT


def _tiny_data(n: int = 400) -> SplitData:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 1, 28, 28, generator=g) * 0.5
    x[torch.arange(n), 0, y, y] += 4.0  # a learnable signal: a bright pixel on the diagonal per class
    return SplitData(x[:300], y[:300], x[300:350], y[300:350], x[350:], y[350:], DATASETS["fashion-mnist"])


def _ctx(epochs: int = 2) -> Context:
    run = load_config(RunConfig, None, [f"optim.epochs={epochs}", "optim.batch_size=50"])
    return Context(run=run, data=_tiny_data(), seed=0)


def get_masks_from_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model = build_model("lenet-300-100")
    from haloprune.pruning.masks import load_state_dict

    load_state_dict(model, state)
    return get_masks(model)


def test_rewind_restores_saved_weights_exactly() -> None:
    model = build_model("lenet-300-100")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    masks = masks_from_scores({"fc1.weight": saved["fc1.weight"].abs()}, 0.8)
    rewind_(model, saved, masks)
    kept = masks["fc1.weight"]
    assert torch.equal(model.fc1.weight[kept], saved["fc1.weight"][kept])
    assert (model.fc1.weight[~kept] == 0).all()
    assert torch.equal(model.fc2.weight, saved["fc2.weight"]) and torch.equal(
        model.fc3.bias, saved["fc3.bias"]
    )


def test_rewind_ignores_the_masks_in_the_saved_state() -> None:
    pruned = build_model("lenet-300-100")
    attach_mask(pruned, "fc2.weight", torch.zeros_like(pruned.fc2.weight, dtype=torch.bool))
    saved = {k: v.clone() for k, v in pruned.state_dict().items()}  # holds fc2.weight_mask
    model = build_model("lenet-300-100")  # no masks: a mask in ``saved`` has nowhere to go
    masks = {"fc1.weight": torch.ones_like(model.fc1.weight, dtype=torch.bool)}
    rewind_(model, saved, masks)
    assert set(get_masks(model)) == {"fc1.weight"}
    assert (model.fc2.weight == 0).all()  # the saved (pruned) values, loaded as plain weights


def test_snip_scores_are_gradient_times_weight() -> None:
    model = build_model("lenet-300-100")
    x, y = torch.randn(20, 1, 28, 28), torch.randint(0, 10, (20,))
    scores = snip_scores(model, x, y)
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(
        scores["fc2.weight"], (model.fc2.weight.grad * model.fc2.weight).abs().detach()
    )
    assert set(scores) == {"fc1.weight", "fc2.weight", "fc3.weight"}


@pytest.mark.parametrize("kind", ["gmp", "imp", "snip", "random"])
def test_per_sparsity_methods_hit_the_target_and_count_epochs(kind: str) -> None:
    params = {"rounds": 1} if kind == "imp" else {}
    outcome = METHODS[kind](**params).run(_ctx(epochs=2), [0.9])
    (record,) = outcome.records
    assert record["achieved_sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert outcome.epochs_used == 2
    assert 0.0 <= record["accuracy"] <= 100.0 and "val_accuracy" in record


def test_finetune_and_penalty_methods_report_every_target() -> None:
    ctx = _ctx(epochs=4)
    ft = METHODS["finetune"](finetune_fraction=0.25).run(ctx, [0.5, 0.9])
    assert [r["sparsity"] for r in ft.records] == [0.5, 0.9] and ft.epochs_used == 4
    assert all(r["finetune_epochs"] == 1 for r in ft.records)
    pen = METHODS["penalty"](penalty={"name": "halo", "xi": 1e-6, "psi": 1e-3}).run(ctx, [0.5, 0.9])
    assert [round(r["achieved_sparsity"], 4) for r in pen.records] == [0.5, 0.9]
    assert pen.state["penalty"] is not None and "lam" in pen.state["penalty"]


def test_adaptive_lasso_method_runs_its_l1_first_fit() -> None:
    """Regression: the first fit builds an L1 from the adaptive lasso's config, whose ``gamma`` is not an
    L1 setting (was: ``L1() got an unexpected keyword argument 'gamma'``)."""
    pen = {"name": "adaptive-lasso", "xi": 1e-5, "gamma": 0.5}
    out = METHODS["penalty"](penalty=pen).run(_ctx(epochs=2), [0.9])
    assert [r["sparsity"] for r in out.records] == [0.9] and out.epochs_used == 2


def test_target_method_records_asked_and_got() -> None:
    """``target``: HALO told the target; the record says how sparse training left it and the accuracy
    before pruning, next to the pruned network's."""
    outcome = METHODS["target"](penalty={"name": "halo"}).run(_ctx(epochs=2), [0.9])
    (record,) = outcome.records
    assert record["sparsity"] == 0.9 and record["achieved_sparsity"] >= 0.9 - 1e-5
    assert 0.0 <= record["trained_sparsity"] <= 1.0 and 0.0 <= record["unpruned_accuracy"] <= 100.0
    assert METHODS["target"].per_sparsity and outcome.epochs_used == 2


def test_imp_reinit_control_differs_from_rewinding() -> None:
    a = METHODS["imp"](rounds=1).run(_ctx(epochs=2), [0.8])
    b = METHODS["imp"](rounds=1, reinit=True).run(_ctx(epochs=2), [0.8])
    assert not torch.equal(a.state["model"]["fc1.weight"], b.state["model"]["fc1.weight"])
    assert set(get_masks_from_state(a.state["model"])) == {"fc1.weight", "fc2.weight", "fc3.weight"}


def test_a_method_can_have_its_own_epoch_budget() -> None:
    """``epochs`` on one method (equal wall-clock comparisons) changes only that method's jobs."""
    path = PAPER_CONFIGS / "fmnist-lenet300-target.toml"
    base = {j.method: j for j in expand(load_sweep_config(path))}
    longer = expand(load_sweep_config(path, ["methods.gmp.epochs=22"]))
    for job in longer:
        if job.method == "gmp":
            assert job.spec["run"]["optim"]["epochs"] == 22 and job.key != base["gmp"].key
    assert base["magnitude-ft-wall"].spec["run"]["optim"]["epochs"] == 21
    assert base["magnitude-ft"].spec["run"]["optim"]["epochs"] == 20
    assert {j.key for j in longer if j.method != "gmp"} <= {j.key for j in expand(load_sweep_config(path))}


def test_sparsevd_method_reports_targets_and_its_native_sparsity() -> None:
    outcome = METHODS["sparsevd"](kl_warmup_epochs=1).run(_ctx(epochs=2), [0.5, 0.9])
    assert [round(r["achieved_sparsity"], 4) for r in outcome.records] == [0.5, 0.9]
    assert all(0.0 <= r["native_sparsity"] <= 1.0 for r in outcome.records)
    assert any(k.endswith("weight_mask") for k in outcome.state["model"])


def test_two_sweep_configs_share_a_per_target_job_and_its_state(tmp_path: Path) -> None:
    from haloprune.experiments.sweep import copy_state

    five = {
        j.method + str(j.sparsity): j for j in expand(load_sweep_config(PAPER_CONFIGS / "fmnist-lenet5.toml"))
    }
    target = {
        j.method + str(j.sparsity): j
        for j in expand(load_sweep_config(PAPER_CONFIGS / "fmnist-lenet5-target.toml"))
    }
    a, b = five["gmp0.98"], target["gmp0.98"]
    assert a.key != b.key and a.result_spec() == b.result_spec()
    # a job that serves every target evaluates the sweep's list: not the same job
    assert five["magnitudeNone"].result_spec() != target["magnitudeNone"].result_spec()

    src = tmp_path / "a" / "states"
    src.mkdir(parents=True)
    (src / "k.pt").write_bytes(b"state")
    job = dataclasses.replace(b, spec={**b.spec, "states": str(tmp_path / "b" / "states")})
    copy_state(job, {"key": "k", "config": {"states": str(src)}})
    assert (tmp_path / "b" / "states" / f"{job.key}.pt").read_bytes() == b"state"


@pytest.mark.parametrize("kind", ["gmp", "imp", "snip", "random"])
def test_per_sparsity_methods_prune_only_the_layers_in_scope(kind: str) -> None:
    params = {"rounds": 1} if kind == "imp" else {}
    run = load_config(
        RunConfig, None, ["optim.epochs=2", "optim.batch_size=50", "model.name=lenet-5", "prune.scope=conv"]
    )
    outcome = METHODS[kind](**params).run(Context(run=run, data=_tiny_data(), seed=0), [0.9])
    state = outcome.state["model"]
    masked = {k.removesuffix("_mask") for k in state if k.endswith("_mask")}
    convs = {k for k, v in state.items() if k.endswith(".weight") and v.dim() == 4}
    assert masked == convs
    kept = sum(int(state[f"{n}_mask"].sum()) for n in convs)
    assert 1 - kept / sum(state[n].numel() for n in convs) == pytest.approx(0.9, abs=1e-3)
    assert outcome.records[0]["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_sparsevd_in_a_sweep_needs_every_layer_in_scope() -> None:
    with pytest.raises(HaloPruneError, match="sparsevd learns a dropout rate for every layer"):
        load_sweep_config(
            PAPER_CONFIGS / "fmnist-lenet5.toml", ["prune.scope=conv", 'methods={vd={kind="sparsevd"}}']
        )


def test_batchnorm_recalibration_reaches_the_jobs_and_keeps_default_keys() -> None:
    path = PAPER_CONFIGS / "fmnist-lenet5.toml"
    plain, recal = (
        expand(load_sweep_config(path)),
        expand(load_sweep_config(path, ["prune.recalibrate_bn=512"])),
    )
    assert "prune" not in plain[0].spec["run"]  # the default leaves the keys of finished jobs alone
    assert {j.key for j in plain}.isdisjoint(j.key for j in recal)
    run = RunConfig.model_validate({**recal[0].spec["run"], "seed": 0})
    assert run.prune.recalibrate_bn == 512


@pytest.mark.usefixtures("one_thread")
def test_target_mode_halo_ends_exactly_at_its_target_on_a_byte_level_gpt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tiny GPT on the torch-source corpus: the run itself leaves exactly the target at zero, among the
    block Linears only (the tied embedding and head stay dense), and its record is in bits per byte."""
    monkeypatch.setenv("HALOPRUNE_COMPILE", "0")  # the eager fused step: the same update, no compile time
    run = load_config(RunConfig, None, TINY_GPT)
    ctx = Context(run=run, data=load_data(run.data, seed=0), seed=0)
    outcome = METHODS["target"](penalty={"name": "halo"}).run(ctx, [0.9])
    (record,) = outcome.records
    weights = 4 * 32 * 32 + 2 * 4 * 32 * 32  # qkv and proj, fc1 and fc2 of the one block
    assert record["trained_sparsity"] == pytest.approx(0.9, abs=1 / weights)  # zeros left by training itself
    assert record["achieved_sparsity"] == pytest.approx(0.9, abs=1 / weights)
    assert record["bits_per_byte"] == record["test_bits_per_byte"] < 8.0  # better than a uniform guess
    assert record["val_bits_per_byte"] > 0 and record["unpruned_bits_per_byte"] > 0
    assert record["corpus_sha256"] == DATASETS["torch-source"].corpus.sha256
    state = outcome.state["model"]
    assert torch.equal(state["head.weight"], state["tok_emb.weight"]) and (state["tok_emb.weight"] != 0).all()
