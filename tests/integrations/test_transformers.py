"""HALOTrainerCallback with the real Hugging Face Trainer (AdamW) on a tiny ViTForImageClassification built
from a ViTConfig (no downloaded weights), on a slice of real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTConfig, ViTForImageClassification

from haloprune import load_state_dict, sparsity_report
from haloprune.data import load_dataset
from haloprune.integrations.transformers import HALOTrainerCallback

pytestmark = pytest.mark.usefixtures("one_thread")


class Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=28,
        patch_size=7,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
    )
    return ViTForImageClassification(config)


def _args(out: Path, epochs: int, **kw) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=epochs,
        per_device_train_batch_size=50,
        learning_rate=5e-3,
        logging_steps=10,
        save_strategy="epoch",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **kw,
    )


def _zeros(model: torch.nn.Module) -> float:
    rows = sparsity_report(model)
    return sum(r.params - r.nonzero for r in rows) / sum(r.params for r in rows)


@pytest.fixture(scope="module")
def fmnist_slice() -> tuple[Images, torch.Tensor, torch.Tensor]:
    data = load_dataset("fashion-mnist", val_size=500, train_subset=4000, test_subset=1000)
    return Images(data.x_train, data.y_train), data.x_test, data.y_test


def test_trainer_with_the_callback_in_target_mode_ends_pruned(
    real_fmnist: Path, fmnist_slice, tmp_path: Path
) -> None:
    train, x_test, y_test = fmnist_slice
    model = tiny_vit()
    cb = HALOTrainerCallback(target_sparsity=0.8)
    trainer = Trainer(model=model, args=_args(tmp_path, 5), train_dataset=train, callbacks=[cb])
    trainer.train()
    assert type(cb.halo.controller).__name__ == "SparsityController"
    trained = 1 - cb.halo.controller.density  # the exact zeros training left (last measured)
    assert abs(trained - 0.8) < 0.05
    # pruned once: the smallest 80% go, and zeros beyond them stay zeros
    assert _zeros(model) == pytest.approx(max(0.8, trained), abs=2e-3)
    logged = [row for row in trainer.state.log_history if "halo/density" in row]
    assert len(logged) >= 10 and "halo/lambda_median" in logged[0] and "loss" in logged[0]
    model.eval()
    with torch.no_grad():
        acc = (model(pixel_values=x_test).logits.argmax(1) == y_test).float().mean().item()
    assert acc > 0.55  # the dense network of these 400 steps: 66.5%
    fresh = tiny_vit()
    load_state_dict(fresh, model.state_dict())  # a plain state dict: masks restored from its zeros
    assert _zeros(fresh) == _zeros(model)


class _StopAfter(TrainerCallback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) >= self.epochs:
            control.should_training_stop = True


class _Probe(TrainerCallback):
    """Records HALO's state as the resumed run starts (after HALOTrainerCallback has restored it)."""

    def __init__(self, halo_cb: HALOTrainerCallback) -> None:
        self.halo_cb, self.seen = halo_cb, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.seen = {k: v.clone() for k, v in self.halo_cb.halo.state_dict().items() if torch.is_tensor(v)}
        self.controller = self.halo_cb.halo.controller.state()


def test_resume_from_a_trainer_checkpoint_restores_halo_exactly(
    real_fmnist: Path, fmnist_slice, tmp_path: Path
) -> None:
    """The Trainer's own resume is not bit-identical here (plain training without HALO differs by up to
    0.2 in a weight after resuming at an epoch boundary), so what is checked is HALO's part: the resumed
    run starts from exactly the λ and controller state of the checkpoint, and goes on to the end."""
    train, _, _ = fmnist_slice

    def run(stop: int | None = None, resume: bool = False):
        cb = HALOTrainerCallback(target_sparsity=0.8, prune_at_end=False)
        probe = _Probe(cb)
        extra = [_StopAfter(stop)] if stop else []
        trainer = Trainer(
            model=tiny_vit(), args=_args(tmp_path, 4), train_dataset=train, callbacks=[cb, probe, *extra]
        )
        trainer.train(resume_from_checkpoint=resume or None)
        return cb, probe

    cut, _ = run(stop=2)
    saved = torch.load(tmp_path / "checkpoint-160" / "halo.pt", weights_only=True)["halo"]
    assert cut.halo.controller.steps == 160
    resumed, probe = run(resume=True)
    for key, value in probe.seen.items():
        assert torch.equal(value, saved[key]), key
    assert probe.controller == saved["_extra_state"]["controller"]
    assert probe.controller["steps"] == 160
    assert resumed.halo.controller.steps == 320


def test_resuming_without_the_halo_state_is_one_clear_error(
    real_fmnist: Path, fmnist_slice, tmp_path: Path
) -> None:
    train, _, _ = fmnist_slice
    args = _args(tmp_path, 2)
    Trainer(model=tiny_vit(), args=args, train_dataset=train).train()  # checkpoints without halo.pt
    cb = HALOTrainerCallback(target_sparsity=0.8)
    trainer = Trainer(model=tiny_vit(), args=_args(tmp_path, 3), train_dataset=train, callbacks=[cb])
    with pytest.raises(FileNotFoundError, match=r"resuming HALO needs .*checkpoint-160/halo\.pt"):
        trainer.train(resume_from_checkpoint=True)
