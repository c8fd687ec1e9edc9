"""What bfloat16 λ costs per step: HALO in target mode with AdamW on LeNet-300-100 (batch 100, one
thread), λ in float32 against ``lambda_dtype="bfloat16"``, interleaved rounds; prints the CPU time per
step of each and the per-round ratio (median [min–max]).

    python benchmarks/lambda_dtype.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from haloprune.models import build_model
from haloprune.penalties import build_penalty


def main(rounds: int = 9, steps: int = 30) -> None:
    torch.set_num_threads(1)
    x, y = torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,))
    setups = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = build_model("lenet-300-100")
        halo = build_penalty("halo", model, target_sparsity=0.9, lambda_dtype=dtype)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        halo.attach(opt, total_steps=1_000_000)
        setups[dtype] = (model, opt, halo)

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for model, opt, _ in setups.values():  # warm-up (compilation)
        for _ in range(20):
            step(model, opt)
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):
        for name, (model, opt, _) in setups.items():
            c0 = time.process_time()
            for _ in range(steps):
                step(model, opt)
            times[name].append((time.process_time() - c0) / steps)
    for name, (_, _, halo) in setups.items():
        ms = 1e3 * statistics.median(times[name])
        print(f"{name}: {ms:.2f} ms/step (CPU time), {halo.state_bytes_per_weight():g} bytes/weight")
    ratios = [b / a for a, b in zip(times["float32"], times["bfloat16"], strict=True)]
    print(f"bfloat16 / float32: {statistics.median(ratios):.3f} [{min(ratios):.3f}–{max(ratios):.3f}]")


if __name__ == "__main__":
    main()
