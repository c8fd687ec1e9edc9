"""A byte-level language model through the methods: a tiny GPT on the torch-source corpus, target-mode HALO
ending exactly at its target, and records that carry bits per byte and the corpus's digest."""

from __future__ import annotations

import math

import pytest
import torch

from haloprune.build import load_data
from haloprune.config import RunConfig, load_config
from haloprune.data.datasets import DATASETS
from haloprune.methods import METHODS, Context
from haloprune.training.evaluate import evaluate, pruned_record

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    'data.name="torch-source"',
    "data.context=16",
    "data.train_subset=256",
    "data.val_size=32",
    "data.test_subset=32",
    'model.name="gpt"',
    "model.dim=32",
    "model.depth=1",
    "model.heads=2",
    'optim.optimizer="adamw"',
    "optim.momentum=0.0",
    "optim.lr=3e-3",
    "optim.batch_size=32",
    "optim.epochs=2",
]


def _ctx() -> Context:
    run = load_config(RunConfig, None, TINY)
    return Context(run=run, data=load_data(run.data, seed=0), seed=0)


def test_target_mode_halo_ends_exactly_at_its_target_on_the_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALOPRUNE_COMPILE", "0")  # the eager fused step: the same update, no compile time
    ctx = _ctx()
    outcome = METHODS["target"](penalty={"name": "halo"}).run(ctx, [0.9])
    (record,) = outcome.records
    weights = 4 * 32 * 32 + 2 * 4 * 32 * 32  # qkv and proj, fc1 and fc2 of the one block (the head: dense)
    assert record["trained_sparsity"] == pytest.approx(0.9, abs=1 / weights)  # zeros left by training itself
    assert record["achieved_sparsity"] == pytest.approx(0.9, abs=1 / weights)
    assert record["bits_per_byte"] == record["test_bits_per_byte"] < 8.0  # better than a uniform guess
    assert record["val_bits_per_byte"] > 0 and 0 <= record["accuracy"] <= 100
    assert (
        record["unpruned_bits_per_byte"] > 0
        and record["corpus_sha256"] == DATASETS["torch-source"].corpus.sha256
    )
    state = outcome.state["model"]
    assert torch.equal(state["head.weight"], state["tok_emb.weight"])  # tied, and saved dense
    assert (state["tok_emb.weight"] != 0).all()


def test_a_text_record_is_bits_per_byte_of_each_split() -> None:
    ctx = _ctx()
    model = ctx.new_model()
    row = pruned_record(model, ctx.data, 0.0)
    for split in ("val", "test"):
        x, y = getattr(ctx.data, f"x_{split}"), getattr(ctx.data, f"y_{split}")
        result = evaluate(model, x, y)
        assert row[f"{split}_bits_per_byte"] == result["loss"] / math.log(2)
        assert row[f"{split}_accuracy"] == result["accuracy"]
    assert (
        row["bits_per_byte"] == row["test_bits_per_byte"] == pytest.approx(8.0, abs=0.2)
    )  # untrained: about log2(256)
