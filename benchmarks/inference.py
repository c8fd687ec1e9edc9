"""Is the pruned model really smaller and faster? File size, CPU latency and accuracy per deployment form.

For LeNet-300-100 and LeNet-5 on Fashion-MNIST, trained with HALO (unstructured) and with group-halo
(structured), pruned once at 90 / 95 / 98% sparsity, each network in these forms:

* ``dense``       the unpruned HALO network, fp32, eager PyTorch (the reference: "no pruning")
* ``dense-compiled``  the same, ``torch.compile`` (inductor, default mode), file: as ``dense``
* ``dense-ort-iob``   the same exported to ONNX, run by onnxruntime with I/O binding (as ``slim-ort-iob``);
                  file: that ONNX file. These two are extra baselines: the dense network in the runtimes
                  the slimmed one gets, so that a speedup from the runtime is not taken for one from pruning
* ``masked``      pruned weights set to zero in the full-size layers (what pruning gives by itself); file:
                  haloprune's compact safetensors (surviving values + bitmask/positions)
* ``csr``         every ``Linear`` as a ``torch.sparse_csr`` matrix (int32 indices) through ``F.linear``;
                  convolutions stay masked dense (CSR applies to matrix products only); file: torch.save
                  of the CSR tensors and the remaining dense parameters
* ``slim``        :func:`haloprune.pruning.slim` of the masked network: dead neurons, filters and input pixels
                  physically removed, plain dense layers, eager PyTorch; file: its ONNX export
* ``slim-compiled``  the slimmed network through ``torch.compile``; file: the same ONNX export (the
                  compiled code is built from the network at load time and has no file of its own)
* ``slim-ort``    the same ONNX file run by onnxruntime (``session.run``: numpy in, a new array out)
* ``slim-ort-iob``  the same ONNX file, onnxruntime with ``IOBinding``: a persistent input and output
                  buffer per input shape, bound once; each call copies its input in and the output out
* ``group-slim``  the group-halo network pruned by whole neurons/filters to the same number of weights,
                  slimmed (eager PyTorch); file: its ONNX export
* ``group-ort``   the same ONNX file run by onnxruntime

Latency: medians over interleaved rounds (every form timed once per round, in turn), batch 1 and batch 256,
with ``torch.set_num_threads(1)`` and onnxruntime limited to 1 thread (all graph optimisations, sequential
execution), after warm-up (compilation included), every call under ``torch.inference_mode()``. The tables
show the process's CPU time per call, which on an idle core is the latency and on a shared machine leaves
out the waits for a core; wall-clock medians are in the JSON too. Accuracy: the
Fashion-MNIST test set (10,000 images). The networks are trained here (``--epochs``, default 10, stored
under ``--out-dir`` and reused on the next call) unless given as finished run directories.

The last line is ``size_ratio=<X> speedup_batch1=<Y>``: for the 98% LeNet-300-100, the fastest form at
batch 1 among the pruned ones (not ``dense*``) within 0.5 points of the masked network's test accuracy;
``size_ratio`` is its file size (for a form without a file of its own, the file it is built from, as listed
above) over the dense fp32 parameter bytes (smaller is better), ``speedup_batch1`` the batch-1 latency of
``dense`` (fp32, eager PyTorch) over its own, in CPU time (larger is better).

    python benchmarks/inference.py                 # ~10 min on 2 CPU cores
    python benchmarks/inference.py --quick         # 1 epoch on 10k images, fewer rounds: a smoke test
    python benchmarks/inference.py --halo-run lenet-300-100=runs/structured/halo
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from haloprune import count_cost, global_magnitude_prune, group_prune, save_sparse, slim
from haloprune.build import load_data
from haloprune.config import TrainConfig, load_config
from haloprune.export import export_onnx
from haloprune.pruning.masks import get_masks, without_masks
from haloprune.training.run import load_trained, train

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "halo-lenet300.toml"
MODELS = ("lenet-300-100", "lenet-5")
# group-halo (ξ, ψ) per model. LeNet-300-100: chosen on the validation split for the tightest budget of
# benchmarks/structured.py. LeNet-5: (3e-2, 1e-2) left it at chance accuracy after 10 epochs, (3e-3, 1e-3)
# reached 88% validation accuracy after 3 (override with --group-penalty MODEL=XI:PSI).
GROUP_PENALTY = {"lenet-300-100": (3e-2, 1e-2), "lenet-5": (3e-3, 1e-3)}


class CSRLinear(nn.Module):
    """``F.linear`` with the weight as a CSR sparse matrix (int32 indices)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        csr = linear.weight.detach().to_sparse_csr()
        self.weight = torch.sparse_csr_tensor(
            csr.crow_indices().int(),
            csr.col_indices().int(),
            csr.values(),
            size=csr.shape,
            check_invariants=False,  # built from a valid CSR tensor
        )
        self.bias = linear.bias.detach().clone() if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@torch.inference_mode()
def to_csr(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by a :class:`CSRLinear`.

    Built under ``inference_mode``: in torch 2.13 ``F.linear`` with a CSR weight made outside it fails
    inside it ("Cannot set version_counter for inference tensor"), and every form is timed inside it."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, CSRLinear(module))
    return model


def csr_bytes(model: nn.Module) -> int:
    """Size of ``torch.save`` of the CSR parts and every other parameter/buffer (masks left out)."""
    state = without_masks(model.state_dict())  # no CSR weights
    for name, module in model.named_modules():
        if isinstance(module, CSRLinear):
            w = module.weight
            state[f"{name}.crow"], state[f"{name}.col"] = w.crow_indices(), w.col_indices()
            state[f"{name}.values"] = w.values()
            if module.bias is not None:
                state[f"{name}.bias"] = module.bias
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def ort_runner(path: Path, io_binding: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """onnxruntime on one CPU thread, all graph optimisations, sequential execution.

    ``io_binding``: instead of ``session.run`` (numpy in, a newly allocated numpy array out), bind a
    persistent input and output buffer per input shape once (``IOBinding``), copy each input into its
    buffer and return a copy of the output buffer, so that the caller owns the result as with every other
    form; the copies are in the timings."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    if not io_binding:

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

        return run

    out_meta = session.get_outputs()[0]
    bound: dict[torch.Size, tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def run_bound(x: torch.Tensor) -> torch.Tensor:
        if x.shape not in bound:
            inp = torch.empty(x.shape)
            out = torch.empty(x.shape[0], *out_meta.shape[1:])
            binding = session.io_binding()
            binding.bind_input("input", "cpu", 0, np.float32, tuple(inp.shape), inp.data_ptr())
            binding.bind_output(out_meta.name, "cpu", 0, np.float32, tuple(out.shape), out.data_ptr())
            bound[x.shape] = (binding, inp, out)
        binding, inp, out = bound[x.shape]
        inp.copy_(x)
        session.run_with_iobinding(binding)
        return out.clone()

    return run_bound


def compiled(model: nn.Module, *examples: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``torch.compile`` (inductor, default mode) of a copy of ``model``, warmed up under
    ``inference_mode`` on every example shape (batch 1 is specialised; a second batch size makes the batch
    dimension dynamic for the others); None, with a note, where it cannot compile (no C++ compiler)."""
    fn = torch.compile(copy.deepcopy(model).eval())
    try:
        with torch.inference_mode():
            for x in examples:
                fn(x)
    except Exception as e:  # inductor raises many kinds; the form is then left out
        print(f"  torch.compile left out: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        return None
    return fn


@torch.inference_mode()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    correct = 0
    for i in range(0, len(y), 1000):
        correct += int((fn(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
    return 100.0 * correct / len(y)


@torch.inference_mode()
def latencies(
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, rounds: int, budget_s: float
) -> dict[str, dict[str, float]]:
    """Median seconds per call of each function on ``x`` over interleaved rounds: ``{"cpu": ..., "wall":
    ..., "cpu_quartiles": ...}``. ``cpu`` is the process's CPU time (``time.process_time``): on a shared
    machine it leaves out the time the process waited for a core, which wall-clock time does not; on an
    idle core the two agree."""
    for fn in fns.values():  # warm-up, and the number of calls per round that fills ~budget_s
        for _ in range(3):
            fn(x)
    calls = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn(x)
        calls[name] = max(1, int(budget_s / max(time.perf_counter() - t0, 1e-6)))
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    wall: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls[name]):
                fn(x)
            wall[name].append((time.perf_counter() - t0) / calls[name])
            cpu[name].append((time.process_time() - c0) / calls[name])
    return {
        "cpu": {n: statistics.median(v) for n, v in cpu.items()},
        "wall": {n: statistics.median(v) for n, v in wall.items()},
        # the spread over the rounds: first and third quartile of the CPU time per call
        "cpu_quartiles": {n: _quartiles(v) for n, v in cpu.items()},
    }


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def get_run(model: str, penalty: list[str], given: str | None, args: argparse.Namespace, data: Any):
    if given:
        cfg, net, _ = load_trained(given)
        return net.eval(), data if data is not None else load_data(cfg.data, cfg.seed)
    tag = (
        "halo"
        if not penalty
        else "ghalo-" + "-".join(p.split(".", 1)[1].replace("=", "") for p in penalty[1:])
    )
    overrides = [
        f"out_dir={json.dumps(args.out_dir)}",
        f"name={model}-{tag}",
        f"model.name={model}",
        f"optim.epochs={args.epochs}",
        *penalty,
    ]
    if args.quick:
        overrides += ["data.train_subset=10000", "data.val_size=1000"]
    cfg = load_config(TrainConfig, CONFIG, overrides)
    t0 = time.perf_counter()
    result = train(cfg, data=data, progress=False)
    print(f"  {cfg.run_dir}: {time.perf_counter() - t0:.0f} s", flush=True)
    return result.model.eval(), result.data


def parse_runs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in MODELS:
            raise SystemExit(f"expected MODEL=VALUE with MODEL in {MODELS}, got {item!r}")
        out[name] = path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sparsities", default="0.9,0.95,0.98")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out-dir", default="runs/inference")
    parser.add_argument("--halo-run", action="append", default=[], metavar="MODEL=RUN_DIR")
    parser.add_argument("--group-run", action="append", default=[], metavar="MODEL=RUN_DIR")
    parser.add_argument(
        "--group-penalty", action="append", default=[], metavar="MODEL=XI:PSI", help="group-halo (ξ, ψ)"
    )
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds (~10 ms each)")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 10k images, 5 rounds")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.rounds, args.out_dir = 1, 5, args.out_dir + "-quick"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    halo_runs, group_runs = parse_runs(args.halo_run), parse_runs(args.group_run)
    group_penalty = dict(GROUP_PENALTY)
    for model_name, value in parse_runs(args.group_penalty).items():
        xi, _, psi = value.partition(":")
        group_penalty[model_name] = (float(xi), float(psi))
    sparsities = [float(s) for s in args.sparsities.split(",")]
    files = Path(args.out_dir) / "files"
    files.mkdir(parents=True, exist_ok=True)
    print(
        "latency: CPU time per call (time.process_time), torch.set_num_threads(1), onnxruntime 1 thread; "
        "medians of interleaved rounds\n"
    )

    data, rows, final = None, [], None
    for model_name in args.models.split(","):
        print(f"{model_name}: training (or reusing finished runs)", flush=True)
        halo, data = get_run(model_name, [], halo_runs.get(model_name), args, data)
        xi, psi = group_penalty[model_name]
        group_pen = ["penalty.name=group-halo", f"penalty.xi={xi:g}", f"penalty.psi={psi:g}"]
        ghalo, data = get_run(model_name, group_pen, group_runs.get(model_name), args, data)
        x_test, y_test = data.x_test, data.y_test
        x1 = torch.zeros(1, *x_test.shape[1:])
        inputs = {1: x_test[:1].clone(), 256: x_test[:256].clone()}
        dense_bytes = sum(p.numel() * p.element_size() for p in halo.parameters())
        dense_cost = count_cost(halo, x1, nonzero_only=False)
        # the dense network in the same runtimes as the slimmed one: fair extra baselines
        dense_compiled = compiled(halo, inputs[1], inputs[256])
        dense_onnx = export_onnx(halo, files / f"{model_name}-dense.onnx", x1)
        dense_ort = ort_runner(dense_onnx, io_binding=True)
        for s in sparsities:
            masked = copy.deepcopy(halo)
            global_magnitude_prune(masked, s)
            small = slim(masked, x1)
            onnx_path = export_onnx(masked, files / f"{model_name}-{s:g}-slim.onnx", x1)
            sparse_path = save_sparse(
                masked, files / f"{model_name}-{s:g}.safetensors", architecture={"name": model_name}
            )
            grouped = copy.deepcopy(ghalo)
            kept = sum(int(m.sum()) for m in get_masks(masked).values())
            group_prune(grouped, x1, params=kept)
            group_small = slim(grouped, x1)
            group_path = export_onnx(grouped, files / f"{model_name}-{s:g}-group.onnx", x1)
            csr = to_csr(masked)
            small_compiled = compiled(small, inputs[1], inputs[256])
            onnx_bytes = onnx_path.stat().st_size
            forms: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor] | None, int, nn.Module | None]] = {
                "dense": (halo, dense_bytes, halo),
                "dense-compiled": (dense_compiled, dense_bytes, halo),
                "dense-ort-iob": (dense_ort, dense_onnx.stat().st_size, halo),
                "masked": (masked, sparse_path.stat().st_size, masked),
                "csr": (csr, csr_bytes(csr), None),
                "slim": (small, onnx_bytes, small),
                "slim-compiled": (small_compiled, onnx_bytes, small),
                "slim-ort": (ort_runner(onnx_path), onnx_bytes, small),
                "slim-ort-iob": (ort_runner(onnx_path, io_binding=True), onnx_bytes, small),
                "group-slim": (group_small, group_path.stat().st_size, group_small),
                "group-ort": (ort_runner(group_path), group_path.stat().st_size, group_small),
            }
            forms = {k: v for k, v in forms.items() if v[0] is not None}  # torch.compile unavailable
            fns = {k: v[0] for k, v in forms.items()}
            lat = {b: latencies(fns, inputs[b], args.rounds, 0.01) for b in inputs}
            masked_acc = None
            print(f"\n### {model_name}, {100 * s:g}% sparsity\n")
            print(
                "| form | file bytes | % of dense fp32 | weights | MACs/input | batch-1 CPU µs "
                "| batch-256 CPU ms | speedup b1 | speedup b256 | test acc % |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for name, (fn, size, module) in forms.items():
                acc = accuracy(fn, x_test, y_test)
                masked_acc = acc if name == "masked" else masked_acc
                if module is None:
                    cost = count_cost(masked, x1)  # CSR: the nonzeros are what it stores and multiplies
                elif name.startswith("dense") or name == "masked":
                    cost = dense_cost
                else:
                    cost = count_cost(module, x1, nonzero_only=False)
                row = {
                    "model": model_name,
                    "sparsity": s,
                    "form": name,
                    "bytes": size,
                    "size_ratio": size / dense_bytes,
                    "weights": cost.params,
                    "macs": cost.macs,
                    "batch1_s": lat[1]["cpu"][name],
                    "batch256_s": lat[256]["cpu"][name],
                    "batch1_wall_s": lat[1]["wall"][name],
                    "batch256_wall_s": lat[256]["wall"][name],
                    "speedup_batch1": lat[1]["cpu"]["dense"] / lat[1]["cpu"][name],
                    "speedup_batch256": lat[256]["cpu"]["dense"] / lat[256]["cpu"][name],
                    "accuracy": acc,
                }
                rows.append(row)
                print(
                    f"| {name} | {size:,} | {100 * row['size_ratio']:.1f} | {cost.params:,} | "
                    f"{cost.macs:,} | "
                    f"{1e6 * row['batch1_s']:.1f} | {1e3 * row['batch256_s']:.2f} | "
                    f"{row['speedup_batch1']:.2f} | {row['speedup_batch256']:.2f} | {acc:.2f} |",
                    flush=True,
                )
            if model_name == "lenet-300-100" and s == max(sparsities):
                ok = [
                    r
                    for r in rows[-len(forms) :]
                    if r["accuracy"] >= masked_acc - 0.5 and not r["form"].startswith("dense")
                ]
                final = max(ok, key=lambda r: r["speedup_batch1"])
    (Path(args.out_dir) / "inference.json").write_text(json.dumps(rows, indent=2))
    print(f"\nwritten {Path(args.out_dir) / 'inference.json'}")
    if final is not None:
        print(f"best at {100 * final['sparsity']:g}% LeNet-300-100: {final['form']}")
        print(f"size_ratio={final['size_ratio']:.4f} speedup_batch1={final['speedup_batch1']:.2f}")


if __name__ == "__main__":
    main()
