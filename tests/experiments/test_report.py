"""Choosing a setting on validation and the sweep table (haloprune.experiments.report)."""

from __future__ import annotations

from haloprune.experiments.report import (
    choose,
    differences_table,
    paired_differences,
    summarize,
    sweep_table,
)


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
