"""HALO's cost per training step, side by side with plain training, in one process.

For each model: a plain SGD step (forward + backward + step) and a HALO step (fused path, the default;
and the reference autograd path for comparison), measured in interleaved rounds after warm-up; the
numbers are medians over rounds. Random inputs of the real shapes (timing does not depend on the data).

    python benchmarks/penalty_overhead.py        # CPU: LeNet-300-100, LeNet-5, VGG-16-bn (width 1/4)
    python benchmarks/penalty_overhead.py --device cuda --models vgg16-bn --batch 64 --image 32 --channels 3

The last line is ``overhead_ratio_max=<X>``: the largest fused-HALO/plain ratio over the LeNets measured.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from haloprune import HALO, build_model

SPECS = {  # name: (model kwargs, default batch)
    "lenet-300-100": ({}, 100),
    "lenet-5": ({}, 100),
    "vgg16-bn": ({"width": 0.25}, 64),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(
    name: str, kwargs: dict, mode: str, x: torch.Tensor, y: torch.Tensor, amp: bool
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model(name, **kwargs).to(x.device)
    if x.device.type == "cuda" and x.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
    params: list = [{"params": model.parameters()}]
    halo = None
    if mode != "plain":
        halo = HALO(model, xi=1e-7, psi=1e-3, fused=mode == "halo-fused").to(x.device)
        params.append({"params": halo.parameters()})
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    if halo is not None:
        halo.attach(opt)
    in_loss = halo is not None and halo.in_loss

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        if in_loss:
            loss = loss + halo()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(
    steps: dict[str, Callable[[], None]], device: torch.device, reps: int, rounds: int
) -> dict[str, float]:
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
    return {k: statistics.median(v) for k, v in times.items()}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, help="batch size (default: per model)")
    ap.add_argument("--image", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--width", type=float, help="VGG width multiplier (default 1/4 on CPU, 1 on CUDA)")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, amp {args.amp}"
    )
    mem_cols = " plain peak MiB | HALO peak MiB |" if device.type == "cuda" else ""
    print(
        "| model | batch | plain ms/step | HALO ms/step | ratio | reference HALO ms/step | ratio "
        "| plain images/s | HALO images/s |" + mem_cols
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if mem_cols else ""))
    lenet_ratios = []
    for name in args.models:
        kwargs, batch = SPECS[name]
        kwargs = dict(kwargs, in_channels=args.channels, image_size=args.image)
        if name == "vgg16-bn":
            kwargs["width"] = args.width or (1.0 if device.type == "cuda" else 0.25)
        batch = args.batch or batch
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, args.channels, args.image, args.image, generator=g).to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), generator=g).to(device)
        steps = {
            m: make_step(name, kwargs, m, x, y, args.amp) for m in ("plain", "halo-fused", "halo-reference")
        }
        reps = args.reps if name != "vgg16-bn" or device.type == "cuda" else max(3, args.reps // 10)
        t = measure(steps, device, reps, args.rounds)
        peak = peak_memory(steps, device)
        ratio = t["halo-fused"] / t["plain"]
        if name.startswith("lenet"):
            lenet_ratios.append(ratio)
        label = f"{name} (width {kwargs['width']:g})" if "width" in kwargs else name
        print(
            f"| {label} | {batch} | {t['plain']:.3f} | {t['halo-fused']:.3f} | {ratio:.3f} | "
            f"{t['halo-reference']:.3f} | {t['halo-reference'] / t['plain']:.3f} | "
            f"{batch / t['plain'] * 1e3:,.0f} | {batch / t['halo-fused'] * 1e3:,.0f} |"
            + (f" {peak['plain']:,.0f} | {peak['halo-fused']:,.0f} |" if peak else ""),
            flush=True,
        )
    if lenet_ratios:
        print(f"overhead_ratio_max={max(lenet_ratios):.3f}")


if __name__ == "__main__":
    main()
