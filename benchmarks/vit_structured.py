"""Structured HALO on a ViT: whole attention heads and MLP neurons removed, a smaller dense network that is
really faster — Fashion-MNIST, the ViT of configs/paper/fmnist-vit.toml (AdamW, 20 epochs).

For every seed it trains (or reuses, if finished, under ``--out-dir``) exactly what ``haloprune train``
would with that sweep's data, model and optimiser settings (an interrupted run is continued exactly)::

    haloprune train --config <fmnist-vit setup> --set name=dense_s<SEED> --set seed=<SEED>
    haloprune train --config <fmnist-vit setup> --set name=ghalo_xi<X>_psi<Y>_s<SEED> --set seed=<SEED> \\
        --set penalty.name=group-halo --set penalty.xi=<X> --set penalty.psi=<Y> \\
        --set 'penalty.exclude=["patch_embed.*", "head.*"]'

group-halo's groups on a ViT are its attention heads (a head's q/k/v rows and biases and its columns of
the output projection) and its MLP hidden neurons (an ``fc1`` row and bias and an ``fc2`` column); the
patch embedding and the classifier write the residual stream and the logits, so they are not grouped.
Then, for each budget of multiply-accumulates per image (dense / 2 and dense / 4 by default):

* every group-halo network is pruned by whole heads and neurons (:func:`haloprune.group_prune`) until its
  slimmed model (:func:`haloprune.pruning.slim`) fits the budget; the grid point with the best mean
  **validation** accuracy over the seeds is the one reported (never chosen on the test set);
* the dense network is group-pruned to the same budget (structured pruning without a group penalty).

Timing (seed 0): the dense ViT and the slimmed networks of each budget, each in PyTorch eager and in
onnxruntime (its ONNX export, I/O binding), batch 1 and batch 256, ``torch.set_num_threads(1)`` and one
onnxruntime thread, interleaved rounds (every form once per round, in turn); CPU time per call, median and
interquartile range over the rounds. Prints the tables of docs/results/transformers.md (part 3) and writes
``<out-dir>/vit_structured.json``.

    python benchmarks/vit_structured.py             # 3 seeds x (1 + 2 grid points) x 20 epochs, then timing
    python benchmarks/vit_structured.py --quick     # 1 epoch, 5,000 images, 1 seed, 1 grid point: smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from inference import accuracy, latencies, ort_runner

from haloprune import count_cost, group_prune, slim
from haloprune.config import TrainConfig
from haloprune.experiments.config import load_sweep_config
from haloprune.export import export_onnx
from haloprune.training.run import train

SWEEP = Path(__file__).resolve().parent.parent / "configs" / "paper" / "fmnist-vit.toml"
EMBED = ["patch_embed.*", "head.*"]  # the residual stream's writer and the classifier: not unit groups


def run_config(name: str, seed: int, args: argparse.Namespace, penalty: dict[str, Any]) -> TrainConfig:
    """The fmnist-vit sweep's setup as one training run."""
    setup = load_sweep_config(SWEEP).model_dump(include={"data", "model", "optim", "device"})
    if args.quick:
        setup["data"] |= {"train_subset": 5000, "val_size": 1000}
        setup["optim"]["epochs"] = 1
    prune = {"exclude": penalty["exclude"]} if "exclude" in penalty else {}  # the same scope for both
    run = {"name": name, "seed": seed, "out_dir": args.out_dir, "penalty": penalty, "prune": prune}
    return TrainConfig.model_validate({**setup, **run})


def trained(cfg: TrainConfig, data: Any = None) -> Any:
    """The finished run (reused), an interrupted one continued exactly, or a new one."""
    t0 = time.perf_counter()
    interrupted = (cfg.run_dir / "config.toml").is_file() and not (cfg.run_dir / "model.pt").is_file()
    result = train(cfg, data=data, progress=False, resume=interrupted)
    print(f"  {cfg.run_dir}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result


def structured(model: torch.nn.Module, data: Any, x1: torch.Tensor, macs: int) -> dict[str, Any]:
    """``model`` group-pruned to ``macs`` and slimmed: its cost, shape and accuracies."""
    pruned = copy.deepcopy(model)
    group_prune(pruned, x1, macs=macs, exclude=EMBED)
    small = slim(pruned, x1).eval()
    cost = count_cost(small, x1, nonzero_only=False)
    alive = [(~b.attn.dead_units("head"), ~b.mlp.dead_units("neuron")) for b in pruned.blocks]
    heads, hidden = [int(h.sum()) for h, _ in alive], [int(n.sum()) for _, n in alive]
    return {
        "model": small,
        "masked": pruned,
        "params": cost.params,
        "macs": cost.macs,
        "heads": heads,
        "hidden": hidden,
        "val": accuracy(small, data.x_val, data.y_val),
        "test": accuracy(small, data.x_test, data.y_test),
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--grid", default="3e-3:1e-3,1e-2:1e-3", help="group-halo ξ:ψ points")
    parser.add_argument("--divisors", default="2,4", help="MAC budgets: dense MACs / each")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (~10 ms each)")
    parser.add_argument("--out-dir", default="runs/vit-structured")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 5,000 images, 1 seed, 1 grid point")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [tuple(float(v) for v in p.split(":")) for p in args.grid.split(",")]
    divisors = [int(d) for d in args.divisors.split(",")]
    if args.quick:
        seeds, grid, args.rounds, args.out_dir = seeds[:1], grid[:1], 3, args.out_dir + "-quick"
    torch.set_num_threads(1)

    print("training (or reusing finished runs):", flush=True)
    dense, ghalo, data = {}, {}, {}
    for seed in seeds:
        dense[seed] = trained(run_config(f"dense_s{seed}", seed, args, {"name": "none"}))
        data[seed] = dense[seed].data
        for xi, psi in grid:
            penalty = {"name": "group-halo", "xi": xi, "psi": psi, "exclude": EMBED}
            cfg = run_config(f"ghalo_xi{xi:g}_psi{psi:g}_s{seed}", seed, args, penalty)
            ghalo[seed, xi, psi] = trained(cfg, data[seed])

    x1 = torch.zeros(1, *data[seeds[0]].x_test.shape[1:])
    full = count_cost(dense[seeds[0]].model, x1, nonzero_only=False)
    budgets = [full.macs // d for d in divisors]
    dense_test = [accuracy(dense[s].model.eval(), data[s].x_test, data[s].y_test) for s in seeds]
    print(f"\ndense ViT: {full.params:,} weights, {full.macs:,} MACs per image, test {mean_std(dense_test)}")

    print("\n### group-halo grid: mean validation accuracy (%) after group pruning to each budget\n")
    print("| ξ | ψ | " + " | ".join(f"{b:,} MACs" for b in budgets) + " |")
    print("|---:|---:|" + "---:|" * len(budgets))
    results: dict[tuple[float, float, int, int], dict[str, Any]] = {}
    for xi, psi in grid:
        cells = []
        for b in budgets:
            for s in seeds:
                results[xi, psi, b, s] = structured(ghalo[s, xi, psi].model.eval(), data[s], x1, b)
            cells.append(statistics.mean(results[xi, psi, b, s]["val"] for s in seeds))
        print(f"| {xi:g} | {psi:g} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)

    print("\n### at each budget (test accuracy %, mean ± std over seeds; shape of seed 0)\n")
    print("| network | MACs / image | weights | heads per block | MLP width per block | test acc % |")
    print("|---|---:|---:|---|---|---:|")
    print(f"| dense | {full.macs:,} | {full.params:,} | - | - | {mean_std(dense_test)} |")
    rows: list[dict[str, Any]] = [
        {"network": "dense", "macs": full.macs, "params": full.params, "test": dense_test}
    ]
    chosen: dict[int, dict[str, Any]] = {}
    for b, d in zip(budgets, divisors, strict=True):
        xi, psi = max(grid, key=lambda p: statistics.mean(results[p[0], p[1], b, s]["val"] for s in seeds))
        best = [results[xi, psi, b, s] for s in seeds]
        baseline = [structured(dense[s].model.eval(), data[s], x1, b) for s in seeds]
        chosen[d] = best[0]
        for label, res in (
            (f"group-halo ξ={xi:g}, {d}x fewer MACs", best),
            (f"dense group-pruned, {d}x", baseline),
        ):
            r0, tests = res[0], [r["test"] for r in res]
            rows.append({"network": label, "macs": r0["macs"], "params": r0["params"], "test": tests})
            print(
                f"| {label} | {r0['macs']:,} | {r0['params']:,} | {r0['heads']} | {r0['hidden']} | "
                f"{mean_std(tests)} |",
                flush=True,
            )

    print("\n### CPU time per call, seed 0 (median [interquartile range] over interleaved rounds)\n")
    files = Path(args.out_dir) / "files"
    files.mkdir(parents=True, exist_ok=True)
    nets = {"dense": dense[seeds[0]].model.eval(), **{f"{d}x": r["model"] for d, r in chosen.items()}}
    forms = {}
    for name, net in nets.items():
        forms[f"{name} eager"] = net
        forms[f"{name} onnxruntime"] = ort_runner(
            export_onnx(net, files / f"vit-{name}.onnx", x1), io_binding=True
        )
    x_test = data[seeds[0]].x_test
    for name, fn in forms.items():  # every form computes what its network does
        ref = nets[name.split()[0]]
        with torch.inference_mode():
            torch.testing.assert_close(fn(x_test[:256]), ref(x_test[:256]), rtol=1e-4, atol=1e-4)
    timing = {b: latencies(forms, x_test[:b].clone(), args.rounds, 0.01) for b in (1, 256)}
    print("| form | batch 1, µs | speedup b1 | batch 256, ms | speedup b256 |")
    print("|---|---:|---:|---:|---:|")
    for name in forms:
        runtime = name.split()[1]
        base = {b: timing[b]["cpu"][f"dense {runtime}"] for b in (1, 256)}
        t1, t256 = timing[1], timing[256]
        q1 = [1e6 * v for v in t1["cpu_quartiles"][name]]
        q256 = [1e3 * v for v in t256["cpu_quartiles"][name]]
        print(
            f"| {name} | {1e6 * t1['cpu'][name]:.1f} [{q1[0]:.1f}–{q1[1]:.1f}] | "
            f"{base[1] / t1['cpu'][name]:.2f} | "
            f"{1e3 * t256['cpu'][name]:.2f} [{q256[0]:.2f}–{q256[1]:.2f}] | "
            f"{base[256] / t256['cpu'][name]:.2f} |",
            flush=True,
        )
    out = Path(args.out_dir) / "vit_structured.json"
    out.write_text(json.dumps({"rows": rows, "timing": {str(b): t for b, t in timing.items()}}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
