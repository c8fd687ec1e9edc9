"""Experiment loggers for ``haloprune train`` and ``haloprune sweep`` (``[logging]`` in a config,
``--logger tensorboard|mlflow|wandb``): TensorBoard (``haloprune[tensorboard]``), MLflow
(``haloprune[mlflow]``) and Weights & Biases (``haloprune[wandb]``, offline by default: no account).

Each gets what ``metrics.jsonl`` holds — every epoch's row, with the penalty's statistics — plus the
resolved config at the start and, at the end, the prune table and the accuracy-vs-sparsity figure
(:func:`haloprune.experiments.report.log_pruned`). The
package of a backend is imported only when that backend is chosen; a missing one is a one-line error
naming the extra to install. ``metrics.jsonl`` stays the record: a logger is a view of it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from haloprune.config import LoggingConfig
from haloprune.core.optional import require
from haloprune.training.callbacks import ExperimentLogger

__all__ = ["MLflowLogger", "TensorBoardLogger", "WandbLogger", "build_logger"]


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a metrics row (the loggers take scalars only)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


NEEDED_BY = "logging.backend"  # what the user set that needs a tracker's package


class TensorBoardLogger(ExperimentLogger):
    """Event files under ``log_dir`` (``tensorboard --logdir``): scalars per epoch, the config and the
    prune table as text, the figure as an image."""

    def __init__(self, log_dir: Path) -> None:
        require("tensorboard", "tensorboard", NEEDED_BY)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_config(self, config: dict[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(key, value, step)

    def log_text(self, name: str, text: str) -> None:
        self.writer.add_text(name, text)

    def log_figure(self, name: str, path: Path) -> None:
        import matplotlib.image

        image = matplotlib.image.imread(str(path))[..., :3]
        self.writer.add_image(name, image, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class MLflowLogger(ExperimentLogger):
    """One MLflow run in the experiment ``experiment`` of ``tracking_uri``: metrics with their epoch as
    step, the config as parameters (dotted keys) and ``config.json``, the prune table and the figure as
    artifacts."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifacts: Path | None) -> None:
        mlflow = require("mlflow", "mlflow", NEEDED_BY)
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = artifacts.resolve().as_uri() if artifacts is not None else None
            try:
                experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            except mlflow.exceptions.MlflowException:  # another worker created it first
                experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_config(self, config: dict[str, Any]) -> None:
        flat = _flatten(config)
        params = [self._param(k, v) for k, v in flat.items()]
        self.client.log_batch(self.run_id, params=params)
        self.client.log_dict(self.run_id, config, "config.json")

    def _param(self, key: str, value: Any) -> Any:
        from mlflow.entities import Param

        return Param(key, str(value)[:6000])  # MLflow's limit on a parameter's value

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k.replace("/", "."), v, now, step) for k, v in _numbers(metrics).items()]
        self.client.log_batch(self.run_id, metrics=rows)

    def log_text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, f"{name}.md")

    def log_figure(self, name: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbLogger(ExperimentLogger):
    """One W&B run (offline by default: ``wandb sync <dir>`` uploads it later)."""

    def __init__(self, project: str, run_name: str, run_dir: Path, mode: str, group: str | None) -> None:
        self.wandb = require("wandb", "wandb", NEEDED_BY)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            project=project, name=run_name, dir=str(run_dir), mode=mode, group=group, reinit="create_new"
        )

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(_numbers(metrics), step=step)

    def log_text(self, name: str, text: str) -> None:
        self.run.log({name: self.wandb.Html(f"<pre>{text}</pre>")})

    def log_figure(self, name: str, path: Path) -> None:
        self.run.log({name: self.wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def build_logger(
    cfg: LoggingConfig, run_name: str, out_dir: str | Path, *, group: str | None = None
) -> ExperimentLogger | None:
    """The logger ``cfg`` asks for (``None`` for ``backend = "none"``), for the run ``run_name``; its files
    go under ``out_dir`` unless ``cfg`` says where. ``group``: the sweep a job belongs to."""
    out_dir = Path(out_dir)
    project = cfg.project or group or run_name.split("/")[0]
    if cfg.backend == "none":
        return None
    if cfg.backend == "tensorboard":
        return TensorBoardLogger(Path(cfg.dir or out_dir / "tensorboard") / run_name)
    if cfg.backend == "mlflow":
        uri = cfg.tracking_uri or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
        artifacts = None if cfg.tracking_uri else out_dir / "mlartifacts"
        if not cfg.tracking_uri:
            out_dir.mkdir(parents=True, exist_ok=True)
        return MLflowLogger(uri, project, run_name, artifacts)
    return WandbLogger(project, run_name.replace("/", "-"), Path(cfg.dir or out_dir), cfg.wandb_mode, group)
