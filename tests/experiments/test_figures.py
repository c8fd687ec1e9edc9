"""What the report's per-layer figures show: the networks as the tables report them; a text sweep's report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from haloprune.build import build_network
from haloprune.config import RunConfig
from haloprune.core.io import save_torch
from haloprune.experiments.analysis import layer_sparsity
from haloprune.experiments.jobs import Job, JobSpec
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.report import choose, summarize
from haloprune.experiments.store import ResultStore
from haloprune.experiments.sweep_report import focus_networks, sweep_report


def test_a_target_mode_state_is_shown_pruned_as_the_run_prunes(tmp_path: Path) -> None:
    """A target-mode job saves the trained network (here with no zeros at all); the per-layer figure must
    show it pruned to the target, with the run's prune.exclude left out (regression: it showed the
    unpruned state, and pruned every layer)."""
    run = RunConfig.model_validate({"prune": {"exclude": ["fc3.weight"]}})
    part = run.model_dump(mode="json", include={"data", "model", "optim", "device", "prune"})
    paths = SweepPaths(tmp_path / "results.sqlite", "s")
    job = Job("s", "halo", 0, 0.9, JobSpec(part, "target", {}, (0.9,), str(paths.states)), {})
    with ResultStore(paths.db) as store:
        assert store.claim(job)
        record = {"sparsity": 0.9, "achieved_sparsity": 0.9, "accuracy": 80.0, "val_accuracy": 80.0}
        store.finish(job.key, [record], 20, 1.0)
        torch.manual_seed(0)
        save_torch({"model": build_network(run).state_dict()}, paths.state(job.key))
        chosen = choose(summarize(store.records("s")))
        [(method, model, _, _)] = list(focus_networks(store, chosen, paths, 0.9))
    layers = layer_sparsity(model)
    assert method == "halo" and layers["fc3.weight"] == 0.0
    kept = sum(int((model.get_parameter(n) != 0).sum()) for n in ("fc1.weight", "fc2.weight"))
    assert 1 - kept / (784 * 300 + 300 * 100) == pytest.approx(0.9, abs=1e-4)


def test_a_text_sweep_reports_bits_per_byte_and_skips_the_image_figures(tmp_path: Path) -> None:
    """A byte-level GPT's sweep: its table in bits per byte (chosen on validation bits per byte), the
    corpus digest, the value-against-sparsity and per-layer figures; no activation spectra (they are of
    training images), and nothing crashes on text."""
    sets = {"data": {"name": "torch-source", "context": 16}, "model": {"name": "gpt", "dim": 16, "heads": 2}}
    run = RunConfig.model_validate(sets)
    part = run.model_dump(mode="json", include={"data", "model", "optim", "device"}, exclude_defaults=True)
    paths = SweepPaths(tmp_path / "results.sqlite", "s")
    job = Job("s", "halo", 0, 0.9, JobSpec(part, "target", {}, (0.9,), str(paths.states)), {})
    with ResultStore(paths.db) as store:
        assert store.claim(job)
        record = {
            "sparsity": 0.9,
            "achieved_sparsity": 0.9,
            "accuracy": 30.0,
            "val_accuracy": 29.0,
            "bits_per_byte": 3.25,
            "val_bits_per_byte": 3.5,
            "corpus_sha256": "ab" * 32,
            "epochs": 20,
        }
        store.finish(job.key, [record], 20, 1.0)
        torch.manual_seed(0)
        save_torch({"model": build_network(run).state_dict()}, paths.state(job.key))
        text, _ = sweep_report(store, paths)
    assert (
        "## s: test bits per byte (lower is better), seed 0" in text and "| halo | **3.250** | 20 |" in text
    )
    assert f"Corpus sha256: `{'ab' * 32}`" in text and "| val bits/byte |" in text
    figures = sorted(p.name for p in paths.folder.glob("*.png"))
    assert figures == ["bits_per_byte_vs_sparsity.png", "layer_sparsity.png"]
