"""Command line: ``haloprune {run,sweep,report,train,prune,export,data}`` — thin wrappers over the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from haloprune.build import load_data
from haloprune.config import TrainConfig, config_path, load_config, shipped_configs
from haloprune.core import __version__
from haloprune.core.errors import HaloPruneError
from haloprune.core.io import save_json, save_text
from haloprune.core.sharded import has_sharded
from haloprune.data import download, load_dataset
from haloprune.data.datasets import DATASETS, default_cache_dir
from haloprune.experiments.config import (
    EXECUTOR_NAMES,
    EXECUTOR_SETTINGS,
    ExecutorConfig,
    SweepConfig,
    load_sweep_config,
)
from haloprune.experiments.executors import build_executor
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.report import log_pruned, sparsity_table
from haloprune.experiments.runner import run_sweep, sweep_status
from haloprune.experiments.store import DEFAULT_PATH, ResultStore
from haloprune.experiments.sweep import copy_state, expand, run_job, worker_settings
from haloprune.experiments.sweep_report import sweep_report, sweeps_summary
from haloprune.export import FORMATS, export_run
from haloprune.integrations.loggers import build_logger
from haloprune.pruning import format_sparsity_report, sparsity_report
from haloprune.training.distributed import teardown, world
from haloprune.training.evaluate import prune_and_evaluate
from haloprune.training.run import load_trained, train


def _set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (a TOML value), e.g. --set optim.epochs=5 (repeatable)",
    )


def _set_and_data_args(p: argparse.ArgumentParser) -> None:
    _set_arg(p)
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the dataset's files (else HALOPRUNE_DATA, Debian's /usr/share/datasets, the "
        "download cache)",
    )


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (defaults are used for what it leaves out)")
    _set_and_data_args(p)
    p.add_argument("--epochs", type=int, help="shortcut for --set optim.epochs=N")
    p.add_argument("--name", help="run name, the folder under out_dir (shortcut for --set name=...)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument(
        "--logger",
        choices=["tensorboard", "mlflow", "wandb"],
        help="also log to this experiment tracker (sets logging.backend; metrics.jsonl stays the record)",
    )


def _sweep_args(p: argparse.ArgumentParser, jobs: int) -> None:
    p.add_argument(
        "--jobs",
        type=int,
        help=f"jobs at once (local: worker processes, default {jobs}; submitit / ray: default "
        "executor.parallel, else as many as the CPUs take, all on SLURM)",
    )
    p.set_defaults(default_jobs=jobs)
    p.add_argument(
        "--executor",
        choices=list(EXECUTOR_NAMES),
        help="where the jobs run (sets executor.name; default the config's [executor], else local)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print where the sweep's jobs stand (queued / running / done / failed) and exit",
    )
    p.add_argument("--quick", action="store_true", help="apply the config's [quick] scale (CI-sized)")
    _set_and_data_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--logger",
        choices=["tensorboard", "mlflow", "wandb"],
        help="also log to this experiment tracker (sets logging.backend; metrics.jsonl stays the record)",
    )
    p.add_argument(
        "--no-reuse",
        action="store_true",
        help="run every job, even one that another sweep in the store has already run identically",
    )


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if args.epochs is not None:
        extra.append(f"optim.epochs={args.epochs}")
    if args.name is not None:
        extra.append(f"name={json.dumps(args.name)}")
    if args.data_dir is not None:
        extra.append(f"data.dir={json.dumps(str(args.data_dir))}")
    return extra


def _train_and_report(cfg: TrainConfig, args: argparse.Namespace, logger: Any) -> None:
    """``haloprune train``'s work; what it holds (a sharded model's tensors, and through them the process
    group) is released when it returns, before the process group is left."""
    result = train(cfg, progress=False if args.quiet else None, resume=args.resume is not None, logger=logger)
    if logger is not None:  # the prune table and figure of `haloprune prune`, at prune.sparsities
        # (a sharded model: its gathered copy, model.pt, on this one process)
        model = load_trained(cfg.run_dir)[1] if has_sharded(result.model) else result.model
        rows = prune_and_evaluate(
            model,
            result.data,
            cfg.prune.sparsities,
            per_layer=cfg.prune.per_layer,
            recalibrate_bn=cfg.prune.recalibrate_bn,
            of=cfg.prune.of,
            zero_below=cfg.prune.zero_below,
            **cfg.prune.selection(),
        )
        figure = cfg.run_dir / "accuracy_vs_sparsity.png"
        log_pruned(logger, [{"method": cfg.name, **r} for r in rows], cfg.optim.epochs, figure)
    if world().is_main:
        last = result.history[-1]
        print(f"{cfg.run_dir}: val accuracy {last['val_accuracy']:.2f}% after {last['epoch']} epochs")
        if cfg.optim.keep == "best-test":
            best = max(result.history, key=lambda r: r["test_accuracy"])  # the first best, as kept
            acc = best["test_accuracy"]
            print(f"kept the weights of epoch {best['epoch']}: best test accuracy {acc:.2f}%")


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.config is not None or _overrides(args):
            raise HaloPruneError("--resume takes the run's own config.toml: give no --config/--set with it")
        cfg = load_config(TrainConfig, args.resume / "config.toml")
        if cfg.run_dir.resolve() != args.resume.resolve():  # the folder was moved: follow it
            cfg = cfg.model_copy(update={"out_dir": str(args.resume.parent), "name": args.resume.name})
    else:
        cfg = load_config(TrainConfig, args.config, _overrides(args))
    cfg = _with_logger(cfg, args.logger)
    logger = build_logger(cfg.logging, cfg.name, cfg.out_dir) if world().is_main else None
    done = False
    try:
        _train_and_report(cfg, args, logger)
        done = True
    finally:
        if logger is not None:
            logger.close()
        teardown(wait=done)  # under torchrun: leave the process group (the run's tensors released by now)
    return 0


def _with_logger(cfg: Any, backend: str | None) -> Any:
    """``--logger NAME`` sets ``logging.backend``."""
    if backend is None:
        return cfg
    return cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"backend": backend})})


def _cmd_prune(args: argparse.Namespace) -> int:
    for s in args.sparsity:
        if not 0.0 <= s < 1.0:
            raise HaloPruneError(f"--sparsity values must be in [0, 1), got {s}")
    if args.recalibrate_bn is not None and args.recalibrate_bn < 0:
        raise HaloPruneError(f"--recalibrate-bn must be >= 0 images, got {args.recalibrate_bn}")
    cfg, model, _ = load_trained(args.run_dir)
    if args.data_dir is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dir": str(args.data_dir)})})
    data = load_data(cfg.data, cfg.seed, "cpu")
    selection = cfg.prune.selection()
    layer_reports: list[str] = []

    def report_layers(s: float, pruned: nn.Module) -> None:
        report = format_sparsity_report(sparsity_report(pruned, **selection))
        layer_reports.append(f"\nper-layer sparsity at {100 * s:g}%:\n{report}")

    rows = prune_and_evaluate(
        model,
        data,
        sorted(set(args.sparsity)),
        per_layer=args.per_layer,
        recalibrate_bn=cfg.prune.recalibrate_bn if args.recalibrate_bn is None else args.recalibrate_bn,
        on_pruned=report_layers if args.layers else None,
        of=cfg.prune.of,
        zero_below=cfg.prune.zero_below,
        **selection,
    )
    records = [{"method": cfg.name, "per_layer": args.per_layer, **r} for r in rows]
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print(sparsity_table(records))
    for report in layer_reports:
        print(report)
    _merge_prune_results(Path(args.run_dir) / "prune_results.json", records)
    return 0


def _merge_prune_results(path: Path, records: list[dict[str, Any]]) -> None:
    """Add ``records`` to the run's ``prune_results.json``, replacing only rows of the same settings
    (sparsity, per-layer, BatchNorm recalibration): earlier results at other settings are kept."""

    def setting(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r.get("sparsity"), bool(r.get("per_layer")), r.get("bn_recalibrated_images", 0))

    try:
        old = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        old = None
    if not isinstance(old, list):  # unreadable: keep it aside, never overwrite it
        path.rename(path.with_name(path.name + ".unreadable"))
        old = []
    new = {setting(r) for r in records}
    merged = [r for r in old if isinstance(r, dict) and setting(r) not in new] + records
    save_json(sorted(merged, key=setting), path)


def _cmd_export(args: argparse.Namespace) -> int:
    _, summary = export_run(
        args.run_dir, args.sparsity, fmt=args.format, out=args.out, structured=args.structured
    )
    print(summary)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    if args.action == "download":
        dest = args.dest or default_cache_dir(args.dataset)
        path = download(args.dataset, Path(dest))
        print(f"{args.dataset}: verified files in {path}")
    else:
        data = load_dataset(args.dataset, args.data_dir, val_size=0)
        what = "images" if data.sha256 is None else f"windows, corpus sha256 {data.sha256}"
        print(
            f"{args.dataset}: OK, {len(data.y_train)} training and {len(data.y_test)} test {what}, "
            "checksums verified"
        )
    return 0


MAIN_CONFIG = Path("configs/main.toml")


def _cmd_configs(args: argparse.Namespace) -> int:
    for name in shipped_configs():
        lines = config_path(name).read_text().splitlines()
        first = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else ""
        print(f"{name:48s} {first}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    path = config_path(args.config or MAIN_CONFIG)
    if not path.is_file():
        raise HaloPruneError(f"no config file {path}; `haloprune configs` lists the shipped ones")
    overrides = list(args.overrides)
    if args.seeds is not None:
        if args.seeds < 1:
            raise HaloPruneError(f"--seeds must be >= 1, got {args.seeds}")
        overrides.append(f"seeds={list(range(args.seeds))}")
    if args.epochs is not None:
        overrides.append(f"optim.epochs={args.epochs}")
    return _sweep(load_sweep_config(path, overrides, quick=args.quick), args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Each config in turn (all of them loaded first: a bad one stops the command before any runs)."""
    configs = [load_sweep_config(path, args.overrides, quick=args.quick) for path in args.config]
    return max(_sweep(cfg, args) for cfg in configs)


def _with_executor(cfg: SweepConfig, name: str | None) -> SweepConfig:
    """``--executor NAME`` sets ``executor.name``; the config's settings of another executor are set
    aside, with a note (a SLURM sweep's config tried on this machine with ``--executor local``). Then
    the settings are checked against the executor (one line if one belongs to another)."""
    if name is not None:
        given = cfg.executor.model_dump(exclude_unset=True, exclude={"name"})
        aside = sorted(k for k in given if EXECUTOR_SETTINGS.get(k, name) != name)
        if aside:
            print(f"note: --executor {name} sets aside executor.{', executor.'.join(aside)}", file=sys.stderr)
        executor = ExecutorConfig(**{k: v for k, v in given.items() if k not in aside}, name=name)
        cfg = cfg.model_copy(update={"executor": executor})
    cfg.executor.check()
    return cfg


def _print_status(cfg: SweepConfig, jobs: list[Any]) -> int:
    """``haloprune sweep --status``: where the sweep's jobs stand, from its store and executor."""
    if not Path(cfg.db).is_file():
        raise HaloPruneError(f"no results store at {cfg.db}: the sweep {cfg.name} has not started")
    with ResultStore(cfg.db) as store:
        running = store.status(cfg.name)["running"] > 0
        # the local executor's jobs live in its driver; a local Ray cluster, too: nothing to ask
        ask = cfg.executor.name == "submitit" or (cfg.executor.name == "ray" and cfg.executor.address)
        executor = build_executor(cfg.executor, cfg.paths) if running and ask else None
        try:
            st = sweep_status(jobs, store, executor)
        finally:
            if executor is not None:
                executor.close()
    driver = f"driver running ({st['driver']})" if st["driver"] else "driver not running"
    print(
        f"sweep {cfg.name}: {len(jobs)} jobs, queued {st['queued']}, running {st['running']}, "
        f"done {st['done']}, failed {st['failed']}; {driver}; executor {cfg.executor.name}"
    )
    for key, method, handle, state in st["running_jobs"]:
        print(f"  running {key} ({method}): handle {handle or '-'}, {state}")
    return 0


def _sweep(cfg: SweepConfig, args: argparse.Namespace) -> int:
    """Run every job of ``cfg`` not yet in its store, then write and print its report."""
    if args.jobs is not None and args.jobs < 1:
        raise HaloPruneError(f"--jobs must be >= 1, got {args.jobs}")
    cfg = _with_executor(_with_logger(cfg, args.logger), args.executor)
    jobs = expand(cfg)
    if args.status:
        return _print_status(cfg, jobs)
    n_jobs = args.jobs if args.jobs is not None else args.default_jobs
    if args.jobs is not None:  # --jobs wins over executor.parallel
        cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"parallel": args.jobs})})
    # data folder, per-run bars, logging: told to each job, never part of its key
    settings = worker_settings(cfg, data_dir=args.data_dir, progress=False if args.quiet else None)
    with ResultStore(cfg.db) as store:
        print(
            f"sweep {cfg.name}: {len(jobs)} jobs ({len(cfg.methods)} methods, seeds {cfg.seeds}), "
            f"store {cfg.db}, executor {cfg.executor.name}"
        )
        try:
            summary = run_sweep(
                jobs,
                run_job,
                store,
                n_jobs=n_jobs,
                progress=False if args.quiet else None,
                reuse=not args.no_reuse,
                adopted=copy_state,
                executor=cfg.executor,
                settings=settings,
            )
        except KeyboardInterrupt:
            if cfg.executor.name != "local":
                print(
                    "haloprune: driver stopped; jobs already submitted go on: run the same command again "
                    "to follow them (--status shows them)",
                    file=sys.stderr,
                )
            raise
    attached = f" ({summary['attached']} re-attached)" if summary["attached"] else ""
    retried = f", resubmitted {summary['retried']} (worker lost)" if summary["retried"] else ""
    print(
        f"done {summary['done']}{attached}, skipped {summary['skipped']} (already done), "
        f"reused {summary['reused']} (done by another sweep), "
        f"failed {len(summary['failed'])}{retried}, {summary['wall_seconds']:.0f} s"
    )
    for key, error in summary["failed"]:
        print(f"  failed {key}: {error}", file=sys.stderr)
    _report(cfg.db, cfg.name, [j.key for j in jobs], as_json=False, data_dir=settings.data_dir)
    paths = cfg.paths
    logger = build_logger(cfg.logging, f"{cfg.name}/report", paths.root, group=cfg.name)
    if logger is not None:  # the sweep's table and figures as one more run
        logger.log_text("report", paths.report.read_text())
        for figure in sorted(paths.folder.glob("*.png")):
            logger.log_figure(figure.stem, figure)
        logger.close()
    return 1 if summary["failed"] else 0


def _report(
    db: str, sweep: str | None, keys: list[str] | None, *, as_json: bool, data_dir: str | None = None
) -> list[dict[str, Any]]:
    """Write and print the report of ``sweep`` (every sweep in ``db`` if None); its records."""
    if not Path(db).is_file():
        raise HaloPruneError(f"no results store at {db}: run `haloprune sweep CONFIG.toml` first")
    everything = []
    with ResultStore(db) as store:
        for name in [sweep] if sweep else store.sweeps():
            paths = SweepPaths(Path(db), name)
            text, records = sweep_report(store, paths, keys, figures=not as_json, data_dir=data_dir)
            if not records:
                print(f"sweep {name}: no finished runs yet", file=sys.stderr)
            elif not as_json:
                print(text)
            everything += records
    return everything


def _cmd_report(args: argparse.Namespace) -> int:
    if args.config and args.sweep:
        raise HaloPruneError("give sweep configs or --sweep NAME, not both")
    if args.summary and not args.config:
        raise HaloPruneError("--summary compares the sweeps of the configs given: name them")
    if not args.config:
        records = _report(args.db or str(DEFAULT_PATH), args.sweep, None, as_json=args.json)
        if args.json:
            print(json.dumps(records, indent=2, default=str))
        return 0
    configs = [load_sweep_config(path, args.overrides, quick=args.quick) for path in args.config]
    done = [
        (cfg, _report(args.db or cfg.db, cfg.name, [j.key for j in expand(cfg)], as_json=args.json))
        for cfg in configs
    ]
    if args.json:
        print(json.dumps([r for _, records in done for r in records], indent=2, default=str))
    elif len(configs) > 1 or args.summary:
        command = " ".join(["haloprune report", *map(str, args.config)] + (["--quick"] if args.quick else []))
        text = sweeps_summary(done, command)
        print(text)
        if args.summary:
            save_text(text, args.summary)
            print(f"written: {args.summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="haloprune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"haloprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="the main job: the sweep configs/main.toml (HALO told each target, GMP, magnitude + "
        "fine-tuning, dense pruned once; LeNet-300-100 on Fashion-MNIST), report + plots",
    )
    p.add_argument("--config", type=Path, help=f"the sweep config (default {MAIN_CONFIG})")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 (default: the config's, one)")
    p.add_argument("--epochs", type=int, help="shortcut for --set optim.epochs=N")
    _sweep_args(p, jobs=min(2, os.cpu_count() or 1))
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", help="train one model (optionally with a penalty) into runs/<name>/")
    _config_args(p)
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "prune", help="prune a trained run once at each sparsity and evaluate (no fine-tuning)"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--sparsity", type=float, nargs="+", required=True, help="fractions of weights to remove")
    p.add_argument("--per-layer", action="store_true", help="same fraction per layer instead of global")
    p.add_argument("--layers", action="store_true", help="also print per-layer sparsity")
    p.add_argument(
        "--recalibrate-bn",
        type=int,
        metavar="N",
        help="re-estimate BatchNorm statistics on N training images after pruning (default: the run's "
        "prune.recalibrate_bn, 0 = off)",
    )
    p.add_argument("--json", action="store_true", help="print records as JSON")
    p.add_argument("--data-dir", type=Path)
    p.set_defaults(func=_cmd_prune)

    p = sub.add_parser("sweep", help="run a comparison: methods x grids x seeds x sparsities, into SQLite")
    p.add_argument("config", type=Path, nargs="+", help="one sweep config or several, run in turn")
    _sweep_args(p, jobs=1)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="tables and plots of the sweeps in the results store")
    p.add_argument(
        "config",
        type=Path,
        nargs="*",
        help="report exactly these sweep configs' jobs (several: and a summary of their `compare` pairs)",
    )
    p.add_argument("--summary", type=Path, help="write the summary of the configs' sweeps to this file")
    p.add_argument("--quick", action="store_true")
    _set_arg(p)
    p.add_argument("--sweep", help="only this sweep (default: every sweep in the store)")
    p.add_argument("--db", help=f"results store (default {DEFAULT_PATH})")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "export",
        help="prune a trained run once and write it (compact safetensors, slimmed ONNX, or a dense "
        "compressed-tensors checkpoint)",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=FORMATS[0],
        help="safetensors: surviving weights + masks, bit-exact; onnx: the slimmed dense model; "
        "compressed-tensors: a folder with the dense weights (pruned ones zero) and config.json recording "
        "the sparsity in compressed-tensors' dense form (no longer sparse-bitmask)",
    )
    p.add_argument(
        "--structured",
        action="store_true",
        help="prune whole neurons/filters (to the weight count of --sparsity) instead of single weights",
    )
    p.add_argument("--out", type=Path, help="output file (default RUN_DIR/model-<sparsity>.<format>)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "configs",
        help="list the shipped configs (a command takes one by its name, from anywhere: "
        "haloprune sweep configs/matrix/lenet300-sgd.toml)",
    )
    p.set_defaults(func=_cmd_configs)

    p = sub.add_parser("data", help="check or download a dataset")
    p.add_argument("action", choices=["check", "download"])
    p.add_argument("dataset", choices=list(DATASETS))
    p.add_argument("--data-dir", type=Path, help="(check) folder to read")
    p.add_argument("--dest", type=Path, help="(download) target folder; default ~/.cache/haloprune/<dataset>")
    p.set_defaults(func=_cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`haloprune ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (nothing left to flush at exit)
        return 141
    except HaloPruneError as err:
        print(f"haloprune: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("haloprune: interrupted; finished epochs are saved in the run directory", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
