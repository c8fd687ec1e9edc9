"""``haloprune train/sweep --logger tensorboard|mlflow|wandb`` on real Fashion-MNIST, read back with each
tracker's own reader: TensorBoard's event accumulator, the MLflow client on a local store, the W&B offline
run log. ``metrics.jsonl`` stays the record, and a logger changes no run's identity or sweep job key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from haloprune.cli import main
from tests.integrations import wandb_log

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(tmp_path: Path, data: Path, backend: str, name: str = "t") -> list[dict]:
    args = ["train", "--quiet", "--logger", backend, "--data-dir", str(data), "--name", name, "--epochs", "2"]
    args += ["--set", f"out_dir='{tmp_path}'", "--set", "data.train_subset=600", "--set", "data.val_size=200"]
    args += ["--set", "data.test_subset=300", "--set", "prune.sparsities=[0.5, 0.9]"]
    args += ["--set", "penalty.name='halo'", "--set", "penalty.xi=1e-6", "--set", "penalty.psi=1e-3"]
    assert main(args) == 0
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_gets_the_metrics_config_prune_table_and_figure(
    real_fmnist: Path, tmp_path: Path
) -> None:
    rows = _train(tmp_path, real_fmnist, "tensorboard")
    events = _events(tmp_path / "tensorboard" / "t")
    assert [(e.step, e.value) for e in events.Scalars("val_accuracy")] == [
        (r["epoch"], pytest.approx(r["val_accuracy"])) for r in rows
    ]
    assert [e.value for e in events.Scalars("lambda_median")] == [
        pytest.approx(r["lambda_median"]) for r in rows
    ]
    assert len(events.Scalars("pruned/accuracy/90")) == 1
    assert {"config/text_summary", "prune_table/text_summary"} <= set(events.Tags()["tensors"])
    table = events.Tensors("prune_table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| 90% |" in table and "achieved sparsity" in table
    assert events.Tags()["images"] == ["accuracy_vs_sparsity"]


def test_mlflow_run_read_back_with_the_client(real_fmnist: Path, tmp_path: Path) -> None:
    rows = _train(tmp_path, real_fmnist, "mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [
        (r["epoch"], pytest.approx(r["val_accuracy"])) for r in rows
    ]
    assert run.data.params["optim.lr"] == "0.1" and run.data.params["penalty.name"] == "halo"
    assert "pruned.accuracy.90" in run.data.metrics
    assert {"config.json", "prune_table.md", "accuracy_vs_sparsity.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    assert run.info.status == "FINISHED"


def test_wandb_offline_needs_no_account(real_fmnist: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = _train(tmp_path, real_fmnist, "wandb")
    (log,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    logged = wandb_log.history(log)
    epochs = [h for h in logged if "val_accuracy" in h]
    assert [(h["_step"], h["val_accuracy"]) for h in epochs] == [
        (r["epoch"], r["val_accuracy"]) for r in rows
    ]
    assert any("pruned/accuracy/90" in h for h in logged)
    assert wandb_log.config(log)["optim"]["lr"] == 0.1


def test_a_sweep_logs_every_job_and_its_report_without_changing_job_keys(
    real_fmnist: Path, tmp_path: Path, capsys
) -> None:
    config = tmp_path / "s.toml"
    config.write_text(
        f'name = "s"\nseeds = [0]\nsparsities = [0.9]\ndb = "{tmp_path / "results.sqlite"}"\n'
        "[data]\ntrain_subset = 600\nval_size = 200\ntest_subset = 300\n[optim]\nepochs = 1\n"
        '[methods.gmp]\nkind = "gmp"\n[methods.dense]\nkind = "penalty"\n'
        'params = { penalty = { name = "none" } }\n'
    )
    args = ["sweep", str(config), "--quiet", "--data-dir", str(real_fmnist)]
    assert main([*args, "--logger", "tensorboard"]) == 0
    runs = tmp_path / "tensorboard" / "s"
    assert sorted(p.name for p in runs.iterdir()) == ["dense", "gmp", "report"]
    assert len(_events(runs / "gmp" / "s0" / "0.9").Scalars("val_accuracy")) == 1
    assert _events(runs / "report").Tags()["images"]
    capsys.readouterr()
    assert main(args) == 0  # without the logger: the same jobs, all already done
    assert "done 0, skipped 2" in capsys.readouterr().out


def test_a_missing_tracker_package_is_one_line(
    real_fmnist: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    args = ["train", "--quiet", "--logger", "tensorboard", "--set", f"out_dir='{tmp_path}'", "--epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'haloprune[tensorboard]'" in err
