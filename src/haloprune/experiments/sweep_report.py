"""``haloprune report``: results store → tables (markdown, JSON) and figures for each sweep.

Per method and target sparsity the grid point with the best mean validation accuracy is chosen; the
tables show its test accuracy, mean ± std over seeds. Figures (``runs/<sweep>/``): accuracy against
sparsity with error bars; per-layer sparsity at ``focus`` sparsity; HALO's λ histogram and |w| against λ;
the eigen-energy spectra of the pruned networks' hidden layers (first seed of each chosen setting).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from haloprune.build import load_data
from haloprune.config import DataConfig
from haloprune.core.io import save_json, save_text
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
    choose,
    chosen_table,
    differences_table,
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
    chosen = choose(summarize(records))
    seeds = sorted({r["seed"] for r in records})
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over {len(seeds)} seeds"
    text = (
        f"## {sweep}: test accuracy (%), {over}, setting chosen on validation\n\n"
        f"{sweep_table(chosen)}\n\n### Chosen settings\n\n{chosen_table(chosen)}\n"
    )
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
        written += _figures(store, chosen, paths, data_dir)
        text += "\n### Figures\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in written[2:]) + "\n"
    save_text(f"# Sweep {sweep}\n\n{text}", paths.report)
    save_json(records, folder / "results.json")
    return text + "\nwritten: " + ", ".join(str(p) for p in written) + "\n", records


def sweeps_summary(sweeps: Sequence[tuple[SweepConfig, list[dict[str, Any]]]], command: str) -> str:
    """The summary of several sweeps (``haloprune report A.toml B.toml``; ``command``: how it was made):
    one line per sweep whose config names a ``compare`` pair, its paired test-accuracy differences."""
    rows = [
        (f"{cfg.title or cfg.name} ({' − '.join(cfg.compare)})", paired_differences(records, cfg.compare))
        for cfg, records in sweeps
        if cfg.compare is not None
    ]
    text = (
        f"# Summary of {len(sweeps)} sweeps\n\n`{command}`\n\n"
        "Test accuracy (%) of the first method minus the second, each at its setting chosen on validation, "
        "seed by seed: mean [min, max] over the seeds both have finished; positive: the first is ahead. "
        "Each sweep's own tables (achieved sparsity and wall time of every method): "
        "`<db folder>/<sweep>/report.md`."
        f"\n\n{differences_table(rows, 'setting')}\n"
    )
    left_out = [cfg.name for cfg, _ in sweeps if cfg.compare is None]
    if left_out:
        text += f"\nNo `compare` in their configs, left out: {', '.join(left_out)}.\n"
    return text


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
    store: ResultStore, chosen: list[dict[str, Any]], paths: SweepPaths, data_dir: str | Path | None
) -> list[Path]:
    sweep, folder = paths.name, paths.folder
    written = [plot_sweep_accuracy(chosen, folder / "accuracy_vs_sparsity.png", title=sweep)]
    sparsities = sorted({r["sparsity"] for r in chosen})
    focus = 0.98 if 0.98 in sparsities else sparsities[-1]
    layers: dict[str, dict[str, float]] = {}
    spectra: dict[str, dict[str, Any]] = {}
    data = None
    for method, model, state, run in focus_networks(store, chosen, paths, focus):
        spec = JobSpec.of(run["config"])
        layers[method] = layer_sparsity(model)
        if data is None:
            data_cfg = data_in(DataConfig.model_validate(spec.run["data"]), data_dir)
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
