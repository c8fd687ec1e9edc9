"""The training loop (haloprune.training.loop): fit takes any DataLoader and loss function."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from haloprune import HALO
from haloprune.config import OptimConfig
from haloprune.training.loop import fit
from tests.helpers import mlp


def test_fit_takes_a_dataloader_and_a_loss_function() -> None:
    model = mlp()
    data = torch.utils.data.TensorDataset(torch.randn(256, 12), torch.randint(0, 4, (256,)))
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    seen = []

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(out.shape[0])
        return F.cross_entropy(out, y, label_smoothing=0.1)

    halo = HALO(model, xi=1e-4, psi=1e-2)
    history = fit(
        model,
        loader,
        OptimConfig(optimizer="adamw", lr=1e-2, momentum=0.0, epochs=2),
        penalty=halo,
        loss_fn=loss_fn,
        val_data=loader,
        progress=False,
    )
    assert len(history) == 2 and sum(seen[:8]) == 256 and halo.attached
    assert all(0.0 <= h["val_accuracy"] <= 100.0 for h in history)
