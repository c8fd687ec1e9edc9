"""HALO's cost per training step, side by side with plain training: SGD and AdamW.

For each model and optimizer: plain training (forward + backward + step; the optimizer both with
``foreach=True`` and with ``fused=True``, the faster one is the baseline), fused HALO (the default),
the reference autograd path, target-mode HALO at 95% with the exact control (the default) and with the
PI control, both past their ramp (the budget of a 20-step run, spent in warm-up), and plain training of
a 90%-pruned model whose masks are enforced by haloprune's step hook ("masked", with the same optimizer
implementation as the baseline: the hook's cost alone).
Variants run in interleaved rounds after warm-up, with the thread count pinned; each ratio is taken per
round against the same round's baseline. The whole measurement runs in ``--processes`` fresh processes
one after another: a ratio moved by up to ±0.04 from one process to the next (where the models lie in
memory, how the threads are placed), more than over the rounds within one; each ratio is reported as the
median over processes of each process's median over rounds, [min–max] over all rounds. Random inputs of
the real shapes, a pool of batches cycled (timing does not depend on the data as long as the network does
not memorise it: one batch repeated is memorised within a few hundred steps, and the denormal
probabilities of a memorised batch slowed one variant's backward pass by 10% and not another's).

    python benchmarks/penalty_overhead.py        # CPU: LeNet-300-100, LeNet-5, VGG-16-bn (width 1/4)
    python benchmarks/penalty_overhead.py --device cuda --models vgg16-bn resnet18 --image 32 --channels 3

The last lines are ``overhead_ratio_max_sgd=<X>``, ``overhead_ratio_max_adamw=<X>``,
``masked_ratio_max=<X>`` and ``overhead_ratio_max=<X>``: the largest median fused-HALO/plain ratio per
optimizer, the largest masked/plain ratio, and the larger of the two HALO ratios, over the models measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from haloprune import HALO, build_model, global_magnitude_prune
from haloprune.pruning.masks import get_masks

SPECS = {  # name: (model kwargs, default batch)
    "lenet-300-100": ({}, 100),
    "lenet-5": ({}, 100),
    "vgg16-bn": ({"width": 0.25}, 64),
    "resnet18": ({"width": 0.25}, 64),
}
CPU_MODELS = ("lenet-300-100", "lenet-5", "vgg16-bn")  # the default on a CPU (ResNet-18: --models)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


OPTIMIZERS = ("sgd", "adamw")
TARGETS = ("target-exact", "target-pi")  # target mode's two controls
MASKED = ("masked", "masked-fused")  # pruned, masks enforced: foreach / fused optimizer


def _optimizer(kind: str, params: list, plain: str) -> torch.optim.Optimizer:
    impl = {"fused": True} if plain == "fused" else {"foreach": True}
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4, **impl)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2, **impl)


def make_step(
    name: str,
    kwargs: dict,
    mode: str,
    kind: str,
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    amp: bool,
) -> Callable[[], None]:
    """One training step of ``mode``: "plain", "plain-fused" (``fused=True``), "halo-fused",
    "halo-reference", "target-exact" / "target-pi" (target mode at 95%, that control, a 20-step budget)
    or "masked" / "masked-fused" (plain with ``foreach`` / ``fused=True``, 90% pruned, masks enforced).
    Each call takes the next batch of the pool ``xs``, ``ys``."""
    x = xs[0]
    torch.manual_seed(0)
    model = build_model(name, **kwargs).to(x.device)
    if x.device.type == "cuda" and x.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
    if mode.startswith("masked"):
        global_magnitude_prune(model, 0.9)
    params: list = [{"params": model.parameters()}]
    halo = None
    if mode.startswith("halo"):
        halo = HALO(model, xi=1e-7, psi=1e-3, fused=mode == "halo-fused").to(x.device)
    elif mode.startswith("target"):
        halo = HALO(model, target_sparsity=0.95, target_control=mode.split("-")[1]).to(x.device)
    if halo is not None:
        params.append({"params": halo.parameters()})
    opt = _optimizer(kind, params, "fused" if mode in ("plain-fused", "masked-fused") else "foreach")
    if halo is not None:
        halo.attach(opt, total_steps=20) if halo.target is not None else halo.attach(opt)
    in_loss = halo is not None and halo.in_loss
    batches = itertools.cycle(list(zip(xs, ys, strict=True)))

    def step() -> None:
        x, y = next(batches)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        if in_loss:
            loss = loss + halo()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step.extra = extra_bytes(model, halo, opt)  # type: ignore[attr-defined]
    return step


def extra_bytes(model: torch.nn.Module, halo: HALO | None, opt: torch.optim.Optimizer) -> tuple[int, float]:
    """Bytes a step reads and writes beyond plain training, in all and per weight concerned: fused HALO's
    λ and the λ moments its kernel reads (SGD: the momentum buffer if momentum is on; coupled Adam: both
    moments; decoupled: none), each read once and written once; or, for a masked model, one more pass
    over each masked weight (read, write) and its factor (read). The weights, gradients and the
    optimizer's own moments are touched by plain training too: the fused step reads and writes them once,
    as the plain step does."""
    if halo is not None and halo.attached:
        g = opt.param_groups[0]
        if isinstance(opt, torch.optim.SGD):
            moments = int(g["momentum"] != 0)
        else:
            moments = 2 * int(halo.update is not None and halo.update.coupled)
        per_weight = 2 * halo.lam.element_size() * (1 + moments)
        return per_weight * halo.num_penalized, per_weight
    masks = get_masks(model)
    params = dict(model.named_parameters())
    total = sum(m.numel() * 3 * params[n].element_size() for n, m in masks.items())
    return total, total / max(1, sum(m.numel() for m in masks.values()))


def bandwidth(device: torch.device, reps: int = 20) -> float:
    """The memory bandwidth (bytes/s, read + write) of copying 64 MiB, larger than the caches: the rate
    at which a step's extra bytes can at best be moved (median of ``reps`` copies)."""
    src = torch.randn(1 << 24, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps + 3):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.nbytes / statistics.median(times[3:])


def measure(
    steps: dict[str, Callable[[], None]], device: torch.device, reps: int, rounds: int
) -> dict[str, list[float]]:
    """ms/step of each variant in each round (variants interleaved within a round)."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up (and compilation)
        for _ in range(max(5, reps // 4)):
            fn()
    _sync(device)
    for _ in range(rounds):
        for k, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            _sync(device)
            times[k].append((time.perf_counter() - t0) / reps * 1e3)
    return times


def paired(times: dict[str, list[float]], variant: str, base: str) -> tuple[float, float, float]:
    """Median, min and max over rounds of ``variant``'s time over ``base``'s in the same round."""
    r = [a / b for a, b in zip(times[variant], times[base], strict=True)]
    return statistics.median(r), min(r), max(r)


def peak_memory(steps: dict[str, Callable[[], None]], device: torch.device) -> dict[str, float]:
    """Peak CUDA memory (MiB) of a few steps of each variant (empty on CPU)."""
    if device.type != "cuda":
        return {}
    out = {}
    for k, fn in steps.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        out[k] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _limit(extra: float, bw: float, plain_ms: float) -> str:
    """The ratio to plain if a step cost only its ``extra`` bytes at bandwidth ``bw`` over plain's time."""
    return f"{1 + extra / bw * 1e3 / plain_ms:.3f}"


def _spread(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.3f} [{r[1]:.3f}–{r[2]:.3f}]"


VARIANTS = ("halo-fused", "halo-reference", *TARGETS, "masked")  # reported against the fastest plain step


def run_setting(args: argparse.Namespace, device: torch.device, name: str, kind: str) -> dict:
    """One model and optimizer in this process: the per-round times of every variant, and what the
    table needs besides (JSON-able, so that a worker process can hand it over)."""
    kwargs, batch = SPECS[name]
    kwargs = dict(kwargs, in_channels=args.channels, image_size=args.image)
    if "width" in kwargs:  # the conv nets: full width on a GPU, a quarter on a CPU
        kwargs["width"] = args.width or (1.0 if device.type == "cuda" else 0.25)
    batch = args.batch or batch
    g = torch.Generator().manual_seed(0)
    shape = (args.pool, batch, args.channels, args.image, args.image)
    xs = list(torch.randn(shape, generator=g).to(device).unbind())
    if device.type == "cuda":
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    ys = list(torch.randint(0, 10, (args.pool, batch), generator=g).to(device).unbind())
    modes = ["plain", "plain-fused", "halo-fused", "halo-reference", *TARGETS, *MASKED]
    steps = {m: make_step(name, kwargs, m, kind, xs, ys, args.amp) for m in modes}
    conv_on_cpu = "width" in kwargs and device.type != "cuda"  # ~25 ms a step: fewer per round
    reps = max(3, args.reps // 10) if conv_on_cpu else args.reps
    times = measure(steps, device, reps, args.rounds)
    base = min(("plain", "plain-fused"), key=lambda m: statistics.median(times[m]))  # the fastest plain
    # the mask guarantee's cost: masked training against plain training with the same optimizer
    times["masked"] = times["masked-fused" if base == "plain-fused" else "masked"]
    return {
        "label": f"{name} (width {kwargs['width']:g})" if "width" in kwargs else name,
        "kind": kind,
        "batch": batch,
        "base": base,
        "times": times,
        "extra": {m: steps[m].extra for m in ("halo-fused", "masked")},  # type: ignore[attr-defined]
        "peak": peak_memory(steps, device),
    }


def _worker_command(args: argparse.Namespace) -> list[str]:
    """This benchmark's command line for one worker process: the same settings, one process."""
    cmd = [sys.executable, __file__, "--models", *args.models, "--optimizers", *args.optimizers]
    for flag in ("device", "image", "channels", "threads", "reps", "rounds", "pool", "batch", "width"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    return [*cmd, *(["--amp"] if args.amp else []), "--processes", "1", "--worker"]


def collect(args: argparse.Namespace, device: torch.device) -> list[list[dict]]:
    """Per setting, the records of every process (this one's alone with ``--processes 1``)."""
    settings = [(name, kind) for name in args.models for kind in args.optimizers]
    if args.processes == 1:
        return [[run_setting(args, device, name, kind)] for name, kind in settings]
    runs = []
    for i in range(args.processes):
        proc = subprocess.run(_worker_command(args), capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"benchmark worker process {i + 1} failed:\n{proc.stderr[-4000:]}")
        runs.append(json.loads(proc.stdout.splitlines()[-1]))
        print(f"process {i + 1} of {args.processes} done", file=sys.stderr, flush=True)
    return [[run[j] for run in runs] for j in range(len(settings))]


def summarise(records: list[dict], variant: str) -> tuple[float, float, float]:
    """``variant`` over the fastest plain step: the median over processes of each one's median over
    rounds, and the min and max over all rounds of all processes."""
    each = [paired(rec["times"], variant, rec["base"]) for rec in records]
    return statistics.median(r[0] for r in each), min(r[1] for r in each), max(r[2] for r in each)


def _ms(records: list[dict], variant: str) -> float:
    """The median over processes of ``variant``'s median ms/step (``"base"``: the fastest plain)."""
    return statistics.median(
        statistics.median(rec["times"][rec["base"] if variant == "base" else variant]) for rec in records
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CPU_MODELS), choices=list(SPECS))
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, help="batch size (default: per model)")
    ap.add_argument("--image", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--width", type=float, help="VGG width multiplier (default 1/4 on CPU, 1 on CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, pinned for the whole run")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--processes", type=int, default=3, help="fresh processes, one after another")
    ap.add_argument("--pool", type=int, default=64, help="random batches cycled (not memorised)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one process's records, as JSON
    args = ap.parse_args()
    if args.processes < 1:
        ap.error("--processes must be at least 1")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    device = torch.device(args.device)
    if args.worker:  # this process's records, one per setting (collect runs them here: --processes 1)
        print(json.dumps([rec for records in collect(args, device) for rec in records]))
        return
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, amp {args.amp}, "
        f"{args.processes} processes x {args.rounds} rounds x {args.reps} steps; ratios: median over "
        "processes of the median over rounds [min–max over all rounds]"
    )
    bw = bandwidth(device)
    print(
        f"memory bandwidth (copy of 64 MiB, read + write): {bw / 1e9:.1f} GB/s; 'limit': plain + the step's "
        "extra bytes at that bandwidth, over plain"
    )
    mem_cols = " plain peak MiB | HALO peak MiB |" if device.type == "cuda" else ""
    print(
        "| model | optimizer | batch | plain ms/step | HALO ms/step | HALO / plain | reference HALO / plain "
        "| HALO B/weight | HALO limit | target exact / plain | target PI / plain | masked / plain "
        "| masked B/weight | masked limit | HALO images/s |" + mem_cols
    )
    print(
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if mem_cols else "")
    )
    worst, worst_masked = dict.fromkeys(args.optimizers, 0.0), 0.0
    for records in collect(args, device):
        rec = records[0]
        r = {v: summarise(records, v) for v in VARIANTS}
        worst[rec["kind"]] = max(worst[rec["kind"]], r["halo-fused"][0])
        worst_masked = max(worst_masked, r["masked"][0])
        bases = [x["base"] for x in records]
        base = max(set(bases), key=bases.count)
        plain_ms, halo_ms = _ms(records, "base"), _ms(records, "halo-fused")
        opt_label = f"{rec['kind']} (plain: {'fused' if base == 'plain-fused' else 'foreach'})"
        (halo_bytes, halo_per), (masked_bytes, masked_per) = (
            rec["extra"]["halo-fused"],
            rec["extra"]["masked"],
        )
        peak = rec["peak"]
        print(
            f"| {rec['label']} | {opt_label} | {rec['batch']} | {plain_ms:.3f} | {halo_ms:.3f} | "
            f"{_spread(r['halo-fused'])} | {_spread(r['halo-reference'])} | "
            f"{halo_per:.0f} | {_limit(halo_bytes, bw, plain_ms)} | "
            + "".join(f"{_spread(r[t])} | " for t in TARGETS)
            + f"{_spread(r['masked'])} | {masked_per:.0f} | {_limit(masked_bytes, bw, plain_ms)} | "
            f"{rec['batch'] / halo_ms * 1e3:,.0f} |"
            + (f" {peak[base]:,.0f} | {peak['halo-fused']:,.0f} |" if peak else ""),
            flush=True,
        )
    for kind, x in worst.items():
        print(f"overhead_ratio_max_{kind}={x:.3f}")
    print(f"masked_ratio_max={worst_masked:.3f}")
    print(f"overhead_ratio_max={max(worst.values()):.3f}")


if __name__ == "__main__":
    main()
