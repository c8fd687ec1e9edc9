"""Evaluation (haloprune.training.evaluate) and the training loop's tallies: class logits ``(B, C)`` per
example, exactly as before; ``(B, C, T)`` logits against ``(B, T)`` targets per position (a language
model's next-token loss and accuracy), whatever the batches' lengths; a record on a text corpus in bits
per byte."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from haloprune.build import build_network, load_data
from haloprune.config import OptimConfig, RunConfig, load_config
from haloprune.data import SplitData
from haloprune.data.datasets import DATASETS
from haloprune.models import build_model
from haloprune.training.evaluate import evaluate, evaluate_batches, pruned_record
from haloprune.training.loop import fit
from tests.helpers import TINY_GPT, mlp

pytestmark = pytest.mark.usefixtures("one_thread")


def _image_data() -> SplitData:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 12, generator=g), torch.randint(0, 4, (30,), generator=g)
    return SplitData(x[:10], y[:10], x[10:20], y[10:20], x[20:], y[20:], DATASETS["fashion-mnist"])


def test_classification_results_are_as_before_bit_for_bit() -> None:
    """The per-example tally as it always was (batch mean x batch size, summed; hits over examples)."""
    model = mlp()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(250, 12, generator=g), torch.randint(0, 4, (250,), generator=g)
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, 250, 64):  # a last, partial batch
            out, yb = model(x[start : start + 64]), y[start : start + 64]
            loss += F.cross_entropy(out, yb).item() * len(yb)
            correct += int((out.argmax(1) == yb).sum().item())
    assert evaluate(model, x, y, batch_size=64) == {"loss": loss / 250, "accuracy": 100.0 * correct / 250}


def test_per_position_loss_and_accuracy_of_sequence_logits() -> None:
    """Batches of windows of different lengths: the loss and accuracy are means over all positions, as
    if every position of every batch were one example."""
    torch.manual_seed(0)
    gpt = build_model("gpt", context=8, dim=16, depth=1, heads=2)
    g = torch.Generator().manual_seed(1)
    batches = [tuple(torch.randint(0, 256, (4, t), generator=g) for _ in "xy") for t in (8, 3)]
    result = evaluate_batches(gpt, batches)
    with torch.no_grad():
        logits = torch.cat([gpt(x).transpose(1, 2).reshape(-1, 256) for x, _ in batches])
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    hits = (logits.argmax(1) == targets).sum().item()
    assert result["accuracy"] == pytest.approx(100.0 * hits / 44)


def test_fit_tallies_sequence_batches_per_position() -> None:
    """fit's training accuracy and loss of a language model are per position (not NaN as for outputs that
    are not class logits), and so is its validation."""
    torch.manual_seed(0)
    gpt = build_model("gpt", context=8, dim=16, depth=1, heads=2)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randint(0, 8, (16, 8), generator=g), torch.randint(0, 8, (16, 8), generator=g))] * 4
    optim = OptimConfig(optimizer="adamw", lr=1e-2, momentum=0.0, epochs=3)
    history = fit(gpt, data, optim, val_data=data[:1], progress=False)
    first, last = history[0], history[-1]
    assert 0.0 <= first["train_accuracy"] <= 100.0 and 0.0 <= last["val_accuracy"] <= 100.0
    assert last["train_ce"] < first["train_ce"]
    assert last["val_loss"] == pytest.approx(evaluate_batches(gpt, data[:1])["loss"], rel=1e-6)


def test_a_record_on_a_text_corpus_holds_bits_per_byte_of_each_split() -> None:
    run = load_config(RunConfig, None, TINY_GPT)
    data = load_data(run.data, seed=0)
    torch.manual_seed(0)
    model = build_network(run)
    row = pruned_record(model, data, 0.0)
    for split in ("val", "test"):
        result = evaluate(model, getattr(data, f"x_{split}"), getattr(data, f"y_{split}"))
        assert row[f"{split}_bits_per_byte"] == result["loss"] / math.log(2)  # nats per byte, in bits
        assert row[f"{split}_accuracy"] == result["accuracy"]
    assert row["bits_per_byte"] == row["test_bits_per_byte"] == pytest.approx(8.0, abs=0.2)  # untrained
    assert row["corpus_sha256"] == data.sha256
    assert "bits_per_byte" not in pruned_record(mlp(), _image_data(), 0.0)  # images: accuracy only
