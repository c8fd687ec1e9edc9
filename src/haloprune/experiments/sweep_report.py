"""``haloprune report``: results store → tables (markdown, JSON) and figures for each sweep.

Per method and target sparsity the grid point with the best mean validation accuracy is chosen; the
tables show its test accuracy, mean ± std over seeds. A sweep on a text corpus is reported in bits per
byte instead (:data:`~haloprune.experiments.report.BITS_PER_BYTE`: chosen on validation bits per byte,
lower is better), its next-byte accuracy beside it, and the corpus's sha256. Figures (``runs/<sweep>/``):
that value against sparsity with error bars; per-layer sparsity at ``focus`` sparsity; HALO's λ histogram
and |w| against λ; the eigen-energy spectra of the pruned networks' hidden layers (first seed of each
chosen setting; image datasets only, as the spectra are of activations over training images).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from haloprune.build import load_data
from haloprune.config import DataConfig
from haloprune.core.io import save_json, save_text
from haloprune.data.datasets import get_spec
from haloprune.experiments.analysis import (
    activation_spectra,
    lambda_and_weights,
    layer_sparsity,
    load_state_model,
)
from haloprune.experiments.config import SweepConfig
from haloprune.experiments.jobs import JobSpec, data_in
from haloprune.experiments.paths import SweepPaths
from haloprune.experiments.plots import plot_lambda, plot_layer_sparsity, plot_spectra, plot_sweep_accuracy
from haloprune.experiments.report import (
    ACCURACY,
    METRICS,
    Metric,
    choose,
    chosen_table,
    differences_table,
    metric_of,
    paired_differences,
    summarize,
    sweep_table,
)
from haloprune.experiments.store import ResultStore


def sweep_report(
    store: ResultStore,
    paths: SweepPaths,
    keys: list[str] | None = None,
    *,
    figures: bool = True,
    data_dir: str | Path | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Write ``report.md``, ``results.json`` and the figures of the sweep ``paths.name`` into its folder
    (``data_dir``: where its dataset is when its config names no folder, as its workers were told)."""
    sweep, folder = paths.name, paths.folder
    records = store.records(sweep)
    if keys is not None:  # this config's jobs, in its order (which breaks selection ties)
        order = {k: i for i, k in enumerate(keys)}
        records = sorted((r for r in records if r["run_key"] in order), key=lambda r: order[r["run_key"]])
    if not records:
        return "", []
    metric = metric_of(records)
    chosen = choose(summarize(records), metric)
    seeds = sorted({r["seed"] for r in records})
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over {len(seeds)} seeds"
    text = (
        f"## {sweep}: {metric.heading}, {over}, setting chosen on validation\n\n"
        f"{sweep_table(chosen, metric=metric)}\n\n"
    )
    if metric is not ACCURACY:
        text += f"### Test accuracy (%) of the same settings\n\n{sweep_table(chosen)}\n\n"
    digests = sorted({r["corpus_sha256"] for r in records if r.get("corpus_sha256")})
    if digests:
        text += f"Corpus sha256: {', '.join(f'`{d}`' for d in digests)}\n\n"
    text += f"### Chosen settings\n\n{chosen_table(chosen, metric)}\n"
    runs = {r["run_key"]: r["reused_from"] for r in records}
    sources = [src for src in runs.values() if src]
    if sources:
        reused = sorted({run["sweep"] for src in set(sources) if (run := store.run(src))})
        n = len(sources)
        text += (
            f"\n{n} of {len(runs)} runs were identical jobs already run by sweep {', '.join(reused)}: "
            "their results were taken over (`reused_from` in results.json).\n"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = [paths.report, folder / "results.json"]
    if figures:
        written += _figures(store, chosen, paths, data_dir, metric)
        text += "\n### Figures\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in written[2:]) + "\n"
    save_text(f"# Sweep {sweep}\n\n{text}", paths.report)
    save_json(records, folder / "results.json")
    return text + "\nwritten: " + ", ".join(str(p) for p in written) + "\n", records


def sweeps_summary(sweeps: Sequence[tuple[SweepConfig, list[dict[str, Any]]]], command: str) -> str:
    """The summary of several sweeps (``haloprune report A.toml B.toml``; ``command``: how it was made):
    one line per sweep whose config names a ``compare`` pair, its paired test-accuracy differences; the
    sweeps on a text corpus in a table of their own, in test bits per byte (each line says so)."""
    compared = [(cfg, records, metric_of(records)) for cfg, records in sweeps if cfg.compare is not None]
    text = f"# Summary of {len(sweeps)} sweeps\n\n`{command}`\n\n"
    for metric in METRICS:
        chosen = [(cfg, records) for cfg, records, m in compared if m is metric]
        if metric is not ACCURACY and not chosen:
            continue
        note = "" if metric is ACCURACY else f", {metric.unit}{'' if metric.higher else ': lower is better'}"
        rows = [
            (
                f"{cfg.title or cfg.name} ({' − '.join(cfg.compare)}{note})",
                paired_differences(records, cfg.compare, metric),
            )
            for cfg, records in chosen
        ]
        text += f"{_summary_intro(metric)}\n\n{differences_table(rows, 'setting', metric.decimals)}\n"
    left_out = [cfg.name for cfg, _ in sweeps if cfg.compare is None]
    if left_out:
        text += f"\nNo `compare` in their configs, left out: {', '.join(left_out)}.\n"
    return text


def _summary_intro(metric: Metric) -> str:
    """What a table of :func:`sweeps_summary` shows."""
    accuracy = (
        "Test accuracy (%) of the first method minus the second, each at its setting chosen on validation, "
        "seed by seed: mean [min, max] over the seeds both have finished; positive: the first is ahead. "
        "Each sweep's own tables (achieved sparsity and wall time of every method): "
        "`<db folder>/<sweep>/report.md`."
    )
    if metric is ACCURACY:
        return accuracy
    ahead = "positive" if metric.higher else "lower is better, so negative"
    return (
        f"\nTest {metric.unit} of the first method minus the second (byte-level language models), each at "
        f"its setting chosen on validation {metric.unit}, seed by seed as above; {ahead}: the first is ahead."
    )


def focus_networks(
    store: ResultStore, chosen: list[dict[str, Any]], paths: SweepPaths, focus: float
) -> Iterator[tuple[str, nn.Module, dict[str, Any], dict[str, Any]]]:
    """``(method, network, saved state, run)`` for each chosen setting at sparsity ``focus`` whose state
    was saved (its first seed): the network as the tables report it, pruned once to ``focus`` as the run
    prunes (a target-mode HALO state is the trained network, before that pruning)."""
    for row in chosen:
        if row["sparsity"] != focus:
            continue
        key = row["runs"][0]
        state_path = paths.state(key)
        run = store.run(key)
        if run is None or not state_path.is_file():
            continue
        model, state = load_state_model(state_path, JobSpec.of(run["config"]).run, focus)
        yield row["method"], model, state, run


def _figures(
    store: ResultStore,
    chosen: list[dict[str, Any]],
    paths: SweepPaths,
    data_dir: str | Path | None,
    metric: Metric = ACCURACY,
) -> list[Path]:
    sweep, folder = paths.name, paths.folder
    figure = folder / f"{metric.key}_vs_sparsity.png"
    written = [plot_sweep_accuracy(chosen, figure, title=sweep, key=metric.key, label=metric.heading)]
    sparsities = sorted({r["sparsity"] for r in chosen})
    focus = 0.98 if 0.98 in sparsities else sparsities[-1]
    layers: dict[str, dict[str, float]] = {}
    spectra: dict[str, dict[str, Any]] = {}
    data = None
    for method, model, state, run in focus_networks(store, chosen, paths, focus):
        spec = JobSpec.of(run["config"])
        layers[method] = layer_sparsity(model)
        data_cfg = data_in(DataConfig.model_validate(spec.run["data"]), data_dir)
        if get_spec(data_cfg.name).corpus is None:  # the spectra are of activations over training images
            if data is None:
                data = _train_images(data_cfg, int(run["seed"]))
            spectra[method] = activation_spectra(model, data)
        if state.get("penalty") and "lam" in state["penalty"]:
            unpruned, _ = load_state_model(paths.state(run["key"]), spec.run)
            try:
                lam, w = lambda_and_weights(unpruned, state["penalty"])
            except ValueError:  # not one λ per weight (sws, layer-halo)
                continue
            written.append(plot_lambda(lam, w, folder / f"lambda_{method}.png", title=f"{sweep}: {method}"))
    if layers:
        written.append(
            plot_layer_sparsity(
                layers,
                folder / "layer_sparsity.png",
                title=f"{sweep}: per-layer sparsity at {100 * focus:g}%",
            )
        )
    if spectra:
        written.append(
            plot_spectra(
                spectra,
                folder / "eigen_spectrum.png",
                title=f"{sweep}: activation spectra at {100 * focus:g}% sparsity",
            )
        )
    return written


def _train_images(data: DataConfig, seed: int, n: int = 10000) -> Any:
    return load_data(data, seed).x_train[:n]
