"""The callbacks around fit (haloprune.training.callbacks): hook order, a checkpoint resumes exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from haloprune.core.io import load_torch, save_torch


def test_callbacks_see_every_step_and_epoch_and_a_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    """A user's callback gets each hook in order; ``Checkpoint`` + ``MetricsFile`` write what resume needs:
    continuing from the epoch-1 checkpoint gives the same weights as training straight through."""
    from haloprune.build import seed_everything
    from haloprune.config import OptimConfig
    from haloprune.data import SplitData
    from haloprune.data.datasets import DATASETS
    from haloprune.models import build_model
    from haloprune.training import Callback, Checkpoint, FitState, MetricsFile, fit

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g)
    data = SplitData(x[:200], y[:200], x[200:], y[200:], x[200:], y[200:], DATASETS["fashion-mnist"])
    optim = OptimConfig(epochs=2, batch_size=50)

    class Log(Callback):
        def __init__(self) -> None:
            self.events: list[str] = []

        def on_epoch_start(self, state: FitState) -> None:
            self.events.append(f"start{state.epoch}")

        def on_step_end(self, state: FitState) -> None:
            self.events.append(f"s{state.step}")

        def on_epoch_end(self, state: FitState, row: dict) -> None:
            self.events.append(f"end{state.epoch}:{row['epoch']}")
            if state.epoch == 1:
                save_torch(state.checkpoint(), tmp_path / "epoch1.pt")

    seed_everything(0)
    straight = build_model("lenet-300-100")
    log = Log()
    ckpt = Checkpoint(tmp_path / "checkpoint.pt")
    fit(straight, data, optim, progress=False, callbacks=[log, MetricsFile(tmp_path / "m.jsonl"), ckpt])
    assert log.events == [
        "start1",
        "s1",
        "s2",
        "s3",
        "s4",
        "end1:1",
        "start2",
        "s5",
        "s6",
        "s7",
        "s8",
        "end2:2",
    ]
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2

    state = load_torch(tmp_path / "epoch1.pt")
    assert state["epoch"] == 1 and state["step"] == 4
    resumed = build_model("lenet-300-100")  # fresh weights: fit(resume=) restores the checkpoint's
    fit(resumed, data, optim, progress=False, resume=state)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_keep_best_test_puts_back_the_best_epochs_weights_also_after_a_resume() -> None:
    """``optim.keep = "best-test"`` (the HALO reference's CIFAR reporting): every epoch's test accuracy is
    in its metrics row, and training ends with the weights of the best epoch (ties: the earlier) — also when
    the run was resumed, since the best so far is in the checkpoint."""
    from haloprune.build import seed_everything
    from haloprune.config import OptimConfig
    from haloprune.data import SplitData
    from haloprune.data.datasets import DATASETS
    from haloprune.models import build_model
    from haloprune.training import Callback, FitState, fit

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, 28, 28, generator=g)  # labels from a noisy linear teacher; a large constant lr
    y = (x.flatten(1) @ torch.randn(784, 10, generator=g) + 8 * torch.randn(300, 10, generator=g)).argmax(1)
    data = SplitData(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], DATASETS["fashion-mnist"])
    optim = OptimConfig(epochs=5, batch_size=50, lr=0.3, schedule="constant", keep="best-test")
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    checkpoints: dict[int, dict] = {}

    class Snap(Callback):
        def on_epoch_end(self, state: FitState, row: dict) -> None:
            snapshots[state.epoch] = {k: v.clone() for k, v in state.model.state_dict().items()}
            checkpoints[state.epoch] = copy.deepcopy(state.checkpoint())

    seed_everything(0)
    model = build_model("lenet-300-100")
    rows = fit(model, data, optim, progress=False, callbacks=[Snap()])
    accs = [r["test_accuracy"] for r in rows]
    best = accs.index(max(accs)) + 1
    assert len(set(accs)) > 1 and best != len(accs)  # the choice matters here: the last epoch is not the best
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[best][k]), k

    cut = best  # resume after the best epoch: the best must survive in the checkpoint
    resumed = build_model("lenet-300-100")
    fit(resumed, data, optim, progress=False, resume=checkpoints[cut])
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, snapshots[best][k]), k


def test_resume_restores_model_masks_penalty_and_lambda_or_refuses_another_model() -> None:
    """One resume path: ``fit(fresh_model, data, resume=ckpt)`` restores everything the checkpoint holds —
    weights, masks, HALO's λ, its moments and target mode's controller, the metrics rows — and ends equal to
    the run trained straight through; a model or penalty that is not the checkpoint's is refused."""
    import pytest

    from haloprune import HALO, global_magnitude_prune
    from haloprune.build import seed_everything
    from haloprune.config import OptimConfig
    from haloprune.data import SplitData
    from haloprune.data.datasets import DATASETS
    from haloprune.models import build_model
    from haloprune.pruning.masks import get_masks
    from haloprune.training import Callback, FitState, fit

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g)
    data = SplitData(x[:200], y[:200], x[200:], y[200:], x[200:], y[200:], DATASETS["fashion-mnist"])
    optim = OptimConfig(epochs=3, batch_size=50)
    saved: dict[int, dict] = {}

    class Keep(Callback):
        def on_epoch_end(self, state: FitState, row: dict) -> None:
            saved[state.epoch] = copy.deepcopy(state.checkpoint())

    def start(seed: int) -> tuple[torch.nn.Module, HALO]:
        seed_everything(seed)
        model = build_model("lenet-300-100")
        global_magnitude_prune(model, 0.5, exclude=["fc3.weight"])  # masks from before the fit
        return model, HALO(model, target_sparsity=0.7)

    model, halo = start(0)
    rows = fit(model, data, optim, penalty=halo, progress=False, callbacks=[Keep()])

    fresh, fresh_halo = start(1)  # other weights, other masks, λ at its start
    resumed_rows = fit(fresh, data, optim, penalty=fresh_halo, progress=False, resume=saved[1])
    timing = ("seconds", "images_per_s")
    untimed = [[{k: v for k, v in r.items() if k not in timing} for r in rr] for rr in (rows, resumed_rows)]
    assert untimed[0] == untimed[1]  # epoch 1's row comes from the checkpoint
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert get_masks(fresh).keys() == get_masks(model).keys()
    assert all(torch.equal(get_masks(fresh)[n], m) for n, m in get_masks(model).items())
    assert torch.equal(fresh_halo.lam, halo.lam) and torch.equal(fresh_halo.lam_momentum, halo.lam_momentum)
    assert fresh_halo.controller.state() == halo.controller.state() and fresh_halo.xi == halo.xi

    other = build_model("lenet-5")
    with pytest.raises(ValueError, match="not the checkpoint's"):
        fit(other, data, optim, penalty=HALO(other, target_sparsity=0.7), progress=False, resume=saved[1])
    with pytest.raises(ValueError, match="a penalty on one side only"):
        fit(start(0)[0], data, optim, progress=False, resume=saved[1])
