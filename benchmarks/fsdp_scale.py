"""HALO on a GPT-2-small-sized model (124M parameters, built from ``GPT2Config()``, no weights) sharded with
FSDP2 on 1, 2 and 4 processes: peak memory per process and the time of a training step, with and without
attached AdamW HALO (decoupled, as target mode uses it), each pair of runs side by side.

    python benchmarks/fsdp_scale.py                       # CPU (gloo): 1, 2, 4 processes, 2 rounds
    python benchmarks/fsdp_scale.py --procs 1 2 --rounds 3 --steps 6 --device cuda

Each (processes, HALO on/off) is one ``torchrun`` run in fresh processes (peak memory is per process
lifetime), in rounds that alternate plain and HALO, so a ratio is taken per round between neighbours and
reported as median [min, max] over rounds. Memory: the peak resident set of each process (CPU) or the
peak of allocated CUDA memory (GPU), the largest over processes; also HALO's own state per process
(``halo.state_bytes_per_weight()`` times the weights it holds). Random tokens of the real shape (a step's
time and memory do not depend on the data). Every process uses one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from haloprune.training.distributed import teardown

    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    _measure(args)
    teardown()  # once _measure returned: the sharded model holding the process group is released


def _measure(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.fsdp import fully_shard
    from transformers import GPT2Config, GPT2LMHeadModel

    from haloprune import HALO

    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_positions=args.seq)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    halo_bytes = 0.0
    if args.halo:
        halo = HALO(model, xi=1e-6, psi=1e-4, coupling="decoupled")
        halo.attach(opt)
        halo_bytes = halo.state_bytes_per_weight() * halo.num_penalized
    g = torch.Generator().manual_seed(rank)
    times = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, 50257, (args.batch, args.seq), generator=g).to(device)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model(ids).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = torch.tensor([peak, halo_bytes, statistics.median(times)], dtype=torch.float64, device=device)
    rows = [torch.zeros_like(row) for _ in range(world)]
    dist.all_gather(rows, row)
    if rank == 0:
        peaks = [float(r[0]) for r in rows]
        out = {
            "procs": world,
            "halo": args.halo,
            "params": n_params,
            "peak_gib_max": max(peaks) / 2**30,
            "halo_state_gib_per_proc": max(float(r[1]) for r in rows) / 2**30,
            "step_s": max(float(r[2]) for r in rows),
        }
        print("RESULT " + json.dumps(out), flush=True)


def _run(procs: int, halo: bool, args: argparse.Namespace) -> dict:
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
    cmd += [f"--master_port={port}"]
    cmd += [__file__, "--worker", "--device", args.device, "--seq", str(args.seq), "--batch", str(args.batch)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--halo"] if halo else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{procs} processes, halo={halo}: failed\n{done.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1, help="sequences per process per step")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--halo", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    print(
        "| processes | peak memory per process, plain | with HALO | HALO's state per process | "
        "step time HALO / plain |"
    )
    print("|---:|---:|---:|---:|---:|")
    for procs in args.procs:
        pairs = []
        for _ in range(args.rounds):
            plain, halo = _run(procs, False, args), _run(procs, True, args)
            print(json.dumps(plain), json.dumps(halo), sep="\n", file=sys.stderr, flush=True)
            pairs.append((plain, halo))
        ratios = [h["step_s"] / p["step_s"] for p, h in pairs]
        peak_p = statistics.median(p["peak_gib_max"] for p, _ in pairs)
        peak_h = statistics.median(h["peak_gib_max"] for _, h in pairs)
        state = pairs[0][1]["halo_state_gib_per_proc"]
        print(
            f"| {procs} | {peak_p:.2f} GiB | {peak_h:.2f} GiB | {state:.3f} GiB | "
            f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] |",
            flush=True,
        )


if __name__ == "__main__":
    main()
