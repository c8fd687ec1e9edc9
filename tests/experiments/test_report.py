"""Choosing a setting on validation and the sweep table (haloprune.experiments.report); bits per byte for
a byte-level language model's sweep, lower is better, in the tables and the summary of several sweeps."""

from __future__ import annotations

import pytest

from haloprune.experiments.config import load_sweep_config
from haloprune.experiments.report import (
    ACCURACY,
    BITS_PER_BYTE,
    choose,
    chosen_table,
    differences_table,
    metric_of,
    paired_differences,
    summarize,
    sweep_table,
)
from haloprune.experiments.sweep_report import sweeps_summary
from tests.helpers import MATRIX_CONFIGS


def _rec(method: str, hp: float, seed: int, val: float, acc: float, sparsity: float = 0.9) -> dict:
    return {
        "method": method,
        "hyperparameters": {"xi": hp},
        "sparsity": sparsity,
        "seed": seed,
        "val_accuracy": val,
        "accuracy": acc,
        "achieved_sparsity": sparsity,
        "epochs": 20,
    }


def _row(hp: int, val: float, n: int = 3) -> dict:
    return {"method": "m", "sparsity": 0.9, "hyperparameters": {"xi": hp}, "val_accuracy_mean": val, "n": n}


def test_selection_uses_validation_and_table_marks_best() -> None:
    rec = _rec
    records = [
        rec("a", 1, 0, 80, 70),
        rec("a", 1, 1, 82, 72),  # better on validation
        rec("a", 2, 0, 70, 90),
        rec("a", 2, 1, 70, 90),  # better on test: must NOT be chosen
        rec("b", 1, 0, 60, 75),
        rec("b", 1, 1, 60, 77),
    ]
    chosen = choose(summarize(records))
    a = next(r for r in chosen if r["method"] == "a")
    assert a["hyperparameters"] == {"xi": 1} and a["accuracy_mean"] == 71.0
    table = sweep_table(chosen)
    assert "**76.00 ± 1.41**" in table and "71.00 ± 1.41" in table


def test_choose_ranks_nan_last_needs_the_most_seeds_and_breaks_ties_by_order() -> None:
    def pick(*rows: dict) -> int:
        (chosen,) = choose(list(rows))
        return chosen["hyperparameters"]["xi"]

    assert pick(_row(1, float("nan")), _row(2, 10.0)) == 2  # a diverged run never wins
    assert pick(_row(1, float("nan")), _row(2, float("nan"))) == 1
    assert pick(_row(1, 80.0), _row(2, 90.0, n=1)) == 1  # one lucky seed of three does not win
    assert pick(_row(1, 80.0), _row(2, 80.0)) == 1 and pick(_row(2, 80.0), _row(1, 80.0)) == 2
    assert len(choose([_row(1, 1.0), {**_row(1, 2.0), "sparsity": 0.95}])) == 2  # per target


def test_paired_differences_pair_seeds_of_the_chosen_settings() -> None:
    """Seed by seed, each method at the setting chosen on validation; a seed only one has finished and a
    target only one has are left out; the table gives mean [min, max] with minus signs."""
    records = [
        _rec("halo", 0, 0, 80, 88.0),
        _rec("halo", 0, 1, 80, 87.5),
        _rec("halo", 0, 2, 80, 90.0),  # gmp has no seed 2
        _rec("gmp", 1, 0, 70, 99.0),  # worse on validation: not chosen
        _rec("gmp", 1, 1, 70, 99.0),
        _rec("gmp", 2, 0, 75, 88.5),
        _rec("gmp", 2, 1, 75, 87.0),
        _rec("halo", 0, 0, 80, 80.0, sparsity=0.99),  # no gmp at 99%
    ]
    diffs = paired_differences(records, ("halo", "gmp"))
    assert diffs == {0.9: [-0.5, 0.5]}
    assert paired_differences(records, ("gmp", "halo")) == {0.9: [0.5, -0.5]}
    table = differences_table([("LeNet (halo − gmp)", diffs), ("empty", {})], "setting")
    assert table.splitlines() == [
        "| setting | 90% | seeds |",
        "|---|---:|---:|",
        "| LeNet (halo − gmp) | 0.00 [−0.50, +0.50] | 2 |",
        "| empty | — | 0 |",
    ]


def _bpb(method: str, hp: float, seed: int, val: float, bpb: float) -> dict:
    """A record of a byte-level language model: bits per byte beside the (next-byte) accuracy."""
    return {**_rec(method, hp, seed, 30.0, 30.0), "val_bits_per_byte": val, "bits_per_byte": bpb}


def test_bits_per_byte_is_chosen_and_compared_lower_is_better() -> None:
    records = [
        _bpb("halo", 1, 0, 3.10, 3.00),
        _bpb("halo", 1, 1, 3.20, 3.10),  # lower on validation: chosen
        _bpb("halo", 2, 0, 3.50, 2.00),
        _bpb("halo", 2, 1, 3.50, 2.00),  # lower on test: must NOT be chosen
        _bpb("gmp", 1, 0, 3.30, 3.1234),
        _bpb("gmp", 1, 1, 3.30, 3.1666),
    ]
    assert metric_of(records) is BITS_PER_BYTE and metric_of([_rec("a", 1, 0, 1, 1)]) is ACCURACY
    chosen = choose(summarize(records), BITS_PER_BYTE)
    halo = next(r for r in chosen if r["method"] == "halo")
    assert halo["hyperparameters"] == {"xi": 1} and halo["bits_per_byte_mean"] == pytest.approx(3.05)
    table = sweep_table(chosen, metric=BITS_PER_BYTE)
    assert "| halo | **3.050 ± 0.071** |" in table and "| gmp | 3.145 ± 0.031 |" in table
    assert "| val bits/byte |" in chosen_table(chosen, BITS_PER_BYTE)
    diffs = paired_differences(records, ("halo", "gmp"), BITS_PER_BYTE)
    assert diffs[0.9] == pytest.approx([-0.1234, -0.0666])
    line = differences_table([("GPT (halo − gmp)", diffs)], "setting", BITS_PER_BYTE.decimals).splitlines()[2]
    assert line == "| GPT (halo − gmp) | −0.095 [−0.123, −0.067] | 2 |"


def test_the_summary_compares_a_text_sweep_in_bits_per_byte_in_a_table_of_its_own() -> None:
    lenet = load_sweep_config(MATRIX_CONFIGS / "lenet300-adamw.toml")
    gpt = load_sweep_config(MATRIX_CONFIGS / "gpt-bytes.toml")
    images = [_rec("halo", 0, 0, 80, 88.0), _rec("gmp", 0, 0, 80, 87.0)]
    text = [_bpb("halo", 0, 0, 3.0, 2.9), _bpb("gmp", 0, 0, 3.1, 3.0)]
    summary = sweeps_summary([(lenet, images), (gpt, text)], "haloprune report")
    assert f"| {lenet.title} (halo − gmp) | +1.00 [+1.00, +1.00] | 1 |" in summary
    row = f"| {gpt.title} (halo − gmp, bits per byte: lower is better) | −0.100 [−0.100, −0.100] | 1 |"
    assert row in summary and "lower is better, so negative: the first is ahead" in summary
    first, second = summary.index("| setting |"), summary.rindex("| setting |")
    assert first < summary.index(lenet.title) < second < summary.index(gpt.title)  # two tables
    assert "bits per byte" not in sweeps_summary([(lenet, images)], "haloprune report")
