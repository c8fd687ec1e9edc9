"""HALO on a model sharded with FSDP2, end to end: shard, train with target-mode HALO, checkpoint, resume,
save one ordinary state dict. Real Fashion-MNIST, LeNet-300-100, AdamW; every process sees its slice of
each global batch.

    torchrun --nproc_per_node=2 examples/fsdp_halo.py --out /tmp/fsdp-halo     # CPU (gloo) or GPUs (NCCL)

Prints, from the first process: the sparsity HALO reached before pruning, the test accuracy, and where
the checkpoints are. Run it again with the same ``--out`` and it resumes from the sharded checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

from haloprune import HALO, build_model, global_magnitude_prune, sparsity_report
from haloprune.build import load_data
from haloprune.config import DataConfig
from haloprune.training.distributed import teardown
from haloprune.training.evaluate import evaluate
from haloprune.training.fsdp import full_state_dict, load_sharded, save_sharded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128, help="the global batch")
    ap.add_argument("--train-subset", type=int, default=None, help="the first N training images only")
    args = ap.parse_args()

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    run(args)
    teardown()  # after run() returned: the sharded model (which holds the process group) is released


def run(args: argparse.Namespace) -> None:
    cuda = torch.cuda.is_available()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    data = load_data(DataConfig(name="fashion-mnist", val_size=5000, train_subset=args.train_subset), 0)

    torch.manual_seed(0)  # the same initial weights on every process
    model = build_model("lenet-300-100").to(device)
    for layer in model.modules():  # each Linear its own unit (its weights gathered only while it runs)
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)

    halo = HALO(model, target_sparsity=args.sparsity)  # after fully_shard: λ is sharded like the weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    steps_per_epoch = len(data.x_train) // args.batch_size
    halo.attach(optimizer, total_steps=args.epochs * steps_per_epoch)

    checkpoint = args.out / "checkpoint"
    start = 0
    if (checkpoint / ".metadata").is_file():
        load_sharded(checkpoint, model, optimizer, halo)
        start = int(halo.controller.steps) // steps_per_epoch
    share = args.batch_size // world
    for epoch in range(start, args.epochs):
        order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(epoch))
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size :][rank * share : (rank + 1) * share]
            x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
        save_sharded(checkpoint, model, optimizer, halo)  # every process writes its shards

    reached = sparsity_report(model)[-1].sparsity  # global, the same on every process
    global_magnitude_prune(model, args.sparsity)  # the exact global selection, on the shards
    full = full_state_dict(model)  # gathered on the first process
    accuracy = evaluate(model, data.x_test.to(device), data.y_test.to(device))["accuracy"]
    if rank == 0:
        torch.save(full, args.out / "model.pt")  # loads with plain load_state_dict into the unsharded model
        print(f"{world} processes: {100 * reached:.2f}% zeros before pruning, test accuracy {accuracy:.2f}%")
        print(f"sharded checkpoint: {checkpoint}; full state dict: {args.out / 'model.pt'}")


if __name__ == "__main__":
    main()
