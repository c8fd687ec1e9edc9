"""A LeNet-300-100 ``LightningModule`` on a slice of real Fashion-MNIST, shared by the Lightning tests and
run as a script for the DDP test (Lightning's DDP launcher starts this file once per rank)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from haloprune import build_model
from haloprune.data import load_dataset
from haloprune.integrations.lightning import HALOCallback


class LeNetModule(pl.LightningModule):
    def __init__(self, steps: int, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = build_model("lenet-300-100")
        self.steps, self.lr = steps, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loaders(data_dir: Path, n_train: int, batch_size: int = 100, distributed: bool = False):
    """Training batches in an order fixed by the epoch alone (a sampler with ``set_epoch``, which Lightning
    calls), so a resumed fit sees the batches the uninterrupted one saw; the test split."""
    data = load_dataset("fashion-mnist", data_dir, val_size=1000, train_subset=n_train, test_subset=2000)
    train = TensorDataset(data.x_train, data.y_train)
    sampler = None if distributed else DistributedSampler(train, num_replicas=1, rank=0, seed=0)
    return DataLoader(train, batch_size=batch_size, sampler=sampler, shuffle=distributed), data


def trainer(root: Path, epochs: int, callbacks: list, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=kwargs.pop("devices", 1),
        callbacks=callbacks,
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=kwargs.pop("logger", False),
        **kwargs,
    )


def accuracy(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = module.training
    module.eval()
    with torch.no_grad():
        acc = 100.0 * (module(x).argmax(1) == y).float().mean().item()
    module.train(was_training)
    return acc


def _ddp_main(data_dir: str, out: str) -> None:
    """Two CPU ranks (gloo): each writes its λ, weights and sparsity for the test to compare."""
    torch.set_num_threads(1)
    loader, _ = loaders(Path(data_dir), 2000, distributed=True)
    steps = 2 * len(loader) // 2
    module = LeNetModule(steps)
    cb = HALOCallback(target_sparsity=0.9)
    t = trainer(Path(out), 2, [cb], devices=2, strategy="ddp", use_distributed_sampler=True)
    t.fit(module, loader)
    rank = t.global_rank
    torch.save({"lam": cb.halo.lam.detach(), "model": module.state_dict()}, Path(out) / f"rank{rank}.pt")
    zeros = sum(int((p == 0).sum()) for n, p in module.named_parameters() if n.endswith("weight"))
    total = sum(p.numel() for n, p in module.named_parameters() if n.endswith("weight"))
    info = {"world": t.world_size, "steps": t.global_step, "sparsity": zeros / total}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(info))


class ShardedLeNet(LeNetModule):
    """The LeNet sharded with FSDP2 by ModelParallelStrategy (each Linear, then the whole), AdamW."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net.modules():
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _fsdp_main(data_dir: str, out: str, resume: str | None) -> None:
    """Two CPU ranks under FSDP2 (ModelParallelStrategy), 3 epochs, a checkpoint every epoch; with
    ``resume``, from that checkpoint. Rank 0 writes the whole weights, every rank the λ it holds."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import ModelParallelStrategy

    torch.set_num_threads(1)
    loader, _ = loaders(Path(data_dir), 2000, distributed=True)
    module = ShardedLeNet(3 * len(loader) // 2)
    cb = HALOCallback(target_sparsity=0.9)
    ck = ModelCheckpoint(dirpath=Path(out) / "ckpt", save_top_k=-1, every_n_epochs=1)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    t = trainer(Path(out), 3, [cb, ck], devices=2, strategy=strategy, use_distributed_sampler=True)
    t.fit(module, loader, ckpt_path=resume)
    weights = {n: p.detach().full_tensor() for n, p in module.net.named_parameters()}
    tag = "resumed" if resume else "first"
    if t.global_rank == 0:
        torch.save(weights, Path(out) / f"{tag}.pt")
    info = {"world": t.world_size, "steps": t.global_step, "lam_held": cb.halo.lam.numel()}
    (Path(out) / f"{tag}{t.global_rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    if sys.argv[1] == "fsdp":
        _fsdp_main(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
        from haloprune.training.distributed import teardown

        teardown()  # the sharded model released: a gloo group its mesh holds at exit can abort the process
    else:
        _ddp_main(sys.argv[1], sys.argv[2])
