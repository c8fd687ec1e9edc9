"""What the report's per-layer figures show: the networks as the tables report them."""

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
from haloprune.experiments.sweep_report import focus_networks


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
