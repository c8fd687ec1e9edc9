"""Structured vs unstructured HALO on LeNet-300-100 / Fashion-MNIST, at equal parameter counts.

Trains (or reuses, if finished) these runs, each exactly what ``haloprune train`` would do::

    haloprune train --config configs/halo-lenet300.toml --set out_dir=runs/structured --set name=halo
    haloprune train --config configs/halo-lenet300.toml --set out_dir=runs/structured --set name=dense \\
        --set penalty.name=none
    haloprune train --config configs/halo-lenet300.toml --set out_dir=runs/structured \\
        --set name=ghalo_xi<X>_psi<Y> --set penalty.name=group-halo --set penalty.xi=<X> --set penalty.psi=<Y>

(20 epochs, lr 0.1 cosine, batch 100, seed 0; the group-halo runs for every (ξ, ψ) of ``--grid``). Then,
for each budget of multiply-accumulates (dense / 10, / 20, / 40 by default):

* every group-halo network is pruned by whole neurons (:func:`haloprune.group_prune`, RMS group norms)
  until its *slimmed* model (:func:`haloprune.pruning.slim`) fits the budget; for each budget the grid point
  with the best **validation** accuracy is the one reported (never chosen on the test set);
* the unstructured HALO network and the dense network are pruned by global magnitude to the *same number
  of weights* as that slimmed model, and the dense network is also group-pruned to the budget.

Prints one markdown table per step and writes ``<out_dir>/structured.json``. Single-threaded torch.

    python benchmarks/structured.py                       # the table of docs/results/structured.md
    python benchmarks/structured.py --quick               # 2 epochs, 1 grid point: a smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from haloprune import count_cost, global_magnitude_prune, group_prune, slim
from haloprune.config import TrainConfig, load_config
from haloprune.training.evaluate import evaluate
from haloprune.training.run import train

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "halo-lenet300.toml"


def _train(overrides: list[str], epochs: int | None, data: Any = None) -> Any:
    if epochs is not None:
        overrides = [*overrides, f"optim.epochs={epochs}"]
    cfg = load_config(TrainConfig, CONFIG, overrides)
    t0 = time.perf_counter()
    result = train(cfg, data=data, progress=False)
    print(f"  {cfg.run_dir}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def _scores(model: torch.nn.Module, data: Any) -> dict[str, float]:
    return {
        "val": evaluate(model, data.x_val, data.y_val)["accuracy"],
        "test": evaluate(model, data.x_test, data.y_test)["accuracy"],
    }


def _structured(model: torch.nn.Module, data: Any, x: torch.Tensor, macs: int) -> dict[str, Any]:
    pruned = copy.deepcopy(model)
    group_prune(pruned, x, macs=macs)
    small = slim(pruned, x)
    cost = count_cost(small, x, nonzero_only=False)
    widths = [m.out_features for m in small.modules() if isinstance(m, torch.nn.Linear)]
    return {"params": cost.params, "macs": cost.macs, "widths": widths, **_scores(small, data)}


def _unstructured(model: torch.nn.Module, data: Any, x: torch.Tensor, params: int) -> dict[str, Any]:
    pruned = copy.deepcopy(model)
    total = count_cost(pruned, x, nonzero_only=False).params
    global_magnitude_prune(pruned, 1.0 - params / total)
    nonzero = count_cost(pruned, x)
    dense_after_slim = count_cost(slim(pruned, x), x, nonzero_only=False)
    return {
        "params": nonzero.params,
        "macs": nonzero.macs,  # only with an ideal sparse kernel
        "slim_macs": dense_after_slim.macs,  # what dense layers really compute after slimming
        **_scores(pruned, data),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", default="runs/structured")
    parser.add_argument(
        "--grid",
        default="3e-3:1e-3,1e-2:1e-3,3e-2:1e-3,1e-1:1e-3,3e-3:1e-2,1e-2:1e-2,3e-2:1e-2,1e-1:1e-2",
        help="group-halo (ξ:ψ) points, comma-separated",
    )
    parser.add_argument("--divisors", default="10,20,40", help="MAC budgets: dense MACs / each")
    parser.add_argument("--epochs", type=int, help="override the config's 20 epochs")
    parser.add_argument("--quick", action="store_true", help="2 epochs, one grid point, one budget")
    args = parser.parse_args()
    torch.set_num_threads(1)
    grid = [tuple(float(v) for v in p.split(":")) for p in args.grid.split(",")]
    divisors = [int(d) for d in args.divisors.split(",")]
    epochs = args.epochs
    out_dir = args.out_dir
    if args.quick:
        grid, divisors, epochs, out_dir = grid[1:2], divisors[:1], 2, out_dir + "-quick"
    common = [f"out_dir={json.dumps(out_dir)}"]

    print("training (or reusing finished runs):", flush=True)
    halo = _train([*common, "name=halo"], epochs)
    data = halo.data  # the same split for every run (same data config and seed)
    dense = _train([*common, "name=dense", "penalty.name=none"], epochs, data)
    ghalo = {
        (xi, psi): _train(
            [
                *common,
                f"name=ghalo_xi{xi:g}_psi{psi:g}",
                "penalty.name=group-halo",
                f"penalty.xi={xi}",
                f"penalty.psi={psi}",
            ],
            epochs,
            data,
        )
        for xi, psi in grid
    }
    x = torch.zeros(1, 1, 28, 28)
    full = count_cost(dense.model, x, nonzero_only=False)
    budgets = [full.macs // d for d in divisors]
    print(f"\ndense LeNet-300-100: {full.params:,} weights, {full.macs:,} MACs per image")
    print(
        f"unpruned test accuracy: dense {_scores(dense.model, data)['test']:.2f}, HALO "
        f"{_scores(halo.model, data)['test']:.2f}"
    )

    print("\n### group-halo grid: validation accuracy (%) after group pruning to each budget (MACs)\n")
    print("| ξ | ψ | " + " | ".join(f"{b:,} (widths)" for b in budgets) + " |")
    print("|---:|---:|" + "---|" * len(budgets))
    grid_rows: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for (xi, psi), res in ghalo.items():
        grid_rows[(xi, psi)] = [_structured(res.model, data, x, b) for b in budgets]
        cells = " | ".join(f"{r['val']:.2f} {r['widths']}" for r in grid_rows[(xi, psi)])
        print(f"| {xi:g} | {psi:g} | {cells} |", flush=True)

    print("\n### at equal weight counts (test accuracy %, val in brackets)\n")
    print(
        "| MAC budget | group-halo (ξ, ψ) chosen on val | slimmed: widths / weights / MACs | test (val) "
        "| HALO unstructured, same weights: test (val) | its MACs: sparse / dense after slim "
        "| dense net, same weights: test | dense net group-pruned: test |"
    )
    print("|---:|---|---|---:|---:|---|---:|---:|")
    table = []
    for i, b in enumerate(budgets):
        best = max(grid_rows, key=lambda k: grid_rows[k][i]["val"])
        s = grid_rows[best][i]
        u = _unstructured(halo.model, data, x, s["params"])
        d = _unstructured(dense.model, data, x, s["params"])
        ds = _structured(dense.model, data, x, b)
        table.append({"budget": b, "chosen": best, "group_halo": s, "halo": u, "dense": d, "dense_group": ds})
        print(
            f"| {b:,} | ξ={best[0]:g}, ψ={best[1]:g} | {s['widths']} / {s['params']:,} / {s['macs']:,} "
            f"({full.macs / s['macs']:.1f}x fewer) | **{s['test']:.2f}** ({s['val']:.2f}) "
            f"| **{u['test']:.2f}** ({u['val']:.2f}) | {u['macs']:,} / {u['slim_macs']:,} "
            f"| {d['test']:.2f} | {ds['test']:.2f} |",
            flush=True,
        )
    out = Path(out_dir) / "structured.json"
    out.write_text(
        json.dumps(
            {
                "dense": {"params": full.params, "macs": full.macs},
                "budgets": budgets,
                "grid": [{"xi": k[0], "psi": k[1], "per_budget": v} for k, v in grid_rows.items()],
                "table": table,
            },
            indent=2,
        )
    )
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
