"""HALO through the frameworks' own trainers on real Fashion-MNIST (docs/results/integrations.md):

* Hugging Face ``Trainer`` (AdamW, cosine) on a ``ViTForImageClassification`` built from a ``ViTConfig``
  shaped like haloprune's ``vit`` (patch 7, width 48, 2 blocks of 4 heads, MLP 96; no downloaded weights):
  dense, then pruned once by magnitude, against ``HALOTrainerCallback(target_sparsity=...)`` pruned by the
  callback at the end;
* PyTorch Lightning on LeNet-300-100 (SGD, cosine per step), ``HALOCallback(target_sparsity=...)``, beside
  ``haloprune train`` with the same recipe (configs/halo-target-lenet300.toml).

Seed 0, one thread, the 10,000 test images; prints the table of docs/results/integrations.md.

    python benchmarks/integrations.py                 # ViT 10 epochs, LeNet 20 epochs
    python benchmarks/integrations.py --quick         # a slice and one epoch: smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from haloprune import global_magnitude_prune, sparsity_report
from haloprune.data import load_dataset


def _zeros(model: torch.nn.Module) -> float:
    rows = sparsity_report(model)
    return sum(r.params - r.nonzero for r in rows) / sum(r.params for r in rows)


def _accuracy(predict, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        hits = sum(
            int((predict(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(y), 1000)
        )
    return 100.0 * hits / len(y)


def hf_vit(data, epochs: int, sparsity: float, out: Path) -> list[dict]:
    from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

    from haloprune.integrations.transformers import HALOTrainerCallback

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data.y_train)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"pixel_values": data.x_train[i], "labels": data.y_train[i]}

    rows = []
    for name in ("dense", "halo"):
        torch.manual_seed(0)
        config = ViTConfig(
            image_size=28,
            patch_size=7,
            num_channels=1,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            num_labels=10,
        )
        model = ViTForImageClassification(config)
        callbacks = [HALOTrainerCallback(target_sparsity=sparsity)] if name == "halo" else []
        args = TrainingArguments(
            output_dir=str(out / name),
            num_train_epochs=epochs,
            per_device_train_batch_size=128,
            learning_rate=1e-3,
            weight_decay=0.05,
            lr_scheduler_type="cosine",
            optim="adamw_torch",
            logging_steps=50,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        start = time.perf_counter()
        trainer = Trainer(model=model, args=args, train_dataset=Images(), callbacks=callbacks)
        trainer.train()
        seconds = time.perf_counter() - start
        model.eval()
        trained_zeros = _zeros(model) if name == "dense" else 1 - callbacks[0].halo.controller.density
        if name == "dense":
            unpruned = _accuracy(lambda x, m=model: m(pixel_values=x).logits, data.x_test, data.y_test)
            global_magnitude_prune(model, sparsity)
        else:
            unpruned = math.nan
        acc = _accuracy(lambda x, m=model: m(pixel_values=x).logits, data.x_test, data.y_test)
        rows.append(
            {
                "setup": f"HF Trainer, ViT, {name}",
                "dense_accuracy": unpruned,
                "accuracy": acc,
                "trained_zeros": 100 * trained_zeros,
                "achieved": 100 * _zeros(model),
                "seconds": seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def lightning_lenet(data, epochs: int, sparsity: float, out: Path) -> list[dict]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from haloprune import build_model
    from haloprune.integrations.lightning import HALOCallback

    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=100, shuffle=True)
    steps = epochs * len(loader)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = build_model("lenet-300-100")

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    torch.manual_seed(0)
    module = Module()
    cb = HALOCallback(target_sparsity=sparsity)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[cb],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    module.eval()
    row = {
        "setup": "Lightning, LeNet-300-100, halo",
        "dense_accuracy": math.nan,
        "accuracy": _accuracy(module, data.x_test, data.y_test),
        "trained_zeros": 100 * (1 - cb.halo.controller.density),
        "achieved": 100 * _zeros(module),
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(row), flush=True)
    return [row]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vit-epochs", type=int, default=10)
    parser.add_argument("--lenet-epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    subset = {"train_subset": 2000, "test_subset": 1000} if args.quick else {}
    data = load_dataset("fashion-mnist", val_size=5000, seed=0, **subset)
    vit_epochs, lenet_epochs = (1, 1) if args.quick else (args.vit_epochs, args.lenet_epochs)
    with tempfile.TemporaryDirectory() as tmp:
        rows = hf_vit(data, vit_epochs, 0.9, Path(tmp)) + lightning_lenet(data, lenet_epochs, 0.95, Path(tmp))
    print("\n| setup | dense, unpruned | test acc % | zeros left by training % | achieved sparsity % | s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        dense = "—" if math.isnan(r["dense_accuracy"]) else f"{r['dense_accuracy']:.2f}"
        print(
            f"| {r['setup']} | {dense} | {r['accuracy']:.2f} | {r['trained_zeros']:.2f} "
            f"| {r['achieved']:.2f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
