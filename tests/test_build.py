"""Turning a config into objects (haloprune.build): the network for its data, saved states rebuilt."""

from __future__ import annotations

import pytest
import torch

from haloprune.build import build_network, example_input, network_kwargs
from haloprune.config import TrainConfig, load_config
from haloprune.core.errors import ConfigError
from haloprune.core.params import select_parameters
from haloprune.experiments.config import SweepConfig
from haloprune.models import build_model


def test_config_builds_the_network_for_its_data() -> None:
    cfg = load_config(TrainConfig, None, ['data.name="cifar100"', 'model.name="resnet18"', "model.width=0.5"])
    assert network_kwargs(cfg) == {"in_channels": 3, "image_size": 32, "num_classes": 100, "width": 0.5}
    padded = load_config(TrainConfig, None, ['model.name="vgg16-bn"', "data.pad_to=32"])
    assert network_kwargs(padded) == {"in_channels": 1, "image_size": 32, "num_classes": 10}
    assert build_network(padded)(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(ConfigError, match="lenet-300-100 has no width"):
        build_network(load_config(TrainConfig, None, ["model.width=0.5"]))


def test_an_example_input_of_the_network_for_its_data() -> None:
    """What export traces and counts with: a zero image, or a window of zero bytes of a text corpus."""
    padded = load_config(TrainConfig, None, ['model.name="vgg16-bn"', "data.pad_to=32"])
    assert example_input(padded).shape == (1, 1, 32, 32)
    text = load_config(TrainConfig, None, ['data.name="torch-source"', "data.context=24", 'model.name="gpt"'])
    x = example_input(text)
    assert x.shape == (1, 24) and x.dtype == torch.long and build_network(text)(x).shape == (1, 256, 24)


def test_saved_state_rebuilds_for_its_data_and_scope(tmp_path) -> None:
    """Sweep reports rebuild a job's network from its run part (was: the model name only, so any
    non-default width, dataset or scope failed to load or was pruned in the wrong layers)."""
    from haloprune.experiments.analysis import load_state_model

    sets = [
        'methods.d={kind="penalty"}',
        'data.name="cifar100"',
        'model.name="resnet18"',
        "model.width=0.125",
    ]
    cfg = load_config(SweepConfig, None, [*sets, 'prune.scope="conv"'])
    net = build_network(cfg)
    torch.save({"model": net.state_dict()}, tmp_path / "s.pt")
    model, _ = load_state_model(tmp_path / "s.pt", cfg.run_part(), sparsity=0.9)
    assert model.classifier.out_features == 100
    assert torch.count_nonzero(model.classifier.weight) == model.classifier.weight.numel()  # not in scope
    conv = [model.get_parameter(n) for n in select_parameters(model, scope="conv")]
    zeros = sum(int((p == 0).sum()) for p in conv)
    assert zeros == round(0.9 * sum(p.numel() for p in conv))


def test_init_from_a_run_a_sparse_export_a_plain_file_and_wrong_shapes(tmp_path, real_fmnist) -> None:
    """``model.init_from`` starts a network from a finished run, haloprune's sparse export (masks and all),
    a plain safetensors or torch state dict; a file of another network is one clear line."""
    from safetensors.torch import save_file

    from haloprune import global_magnitude_prune, save_sparse
    from haloprune.pruning.masks import get_masks
    from haloprune.training.run import train

    small = ["data.train_subset=500", "data.val_size=100", "data.test_subset=100", "optim.epochs=1"]
    cfg = load_config(TrainConfig, None, [*small, f"out_dir='{tmp_path}'", "name=dense"])
    dense = train(cfg, progress=False).model

    def started(source) -> torch.nn.Module:
        return build_network(load_config(TrainConfig, None, [f"model.init_from='{source}'"]))

    for k, v in started(tmp_path / "dense").state_dict().items():
        assert torch.equal(v, dense.state_dict()[k]), k

    pruned = build_network(cfg)
    pruned.load_state_dict(dense.state_dict())
    global_magnitude_prune(pruned, 0.9)
    save_sparse(pruned, tmp_path / "p.safetensors", architecture={"name": "lenet-300-100"})
    from_sparse = started(tmp_path / "p.safetensors")
    assert set(get_masks(from_sparse)) == set(get_masks(pruned))  # masks come along: pruned stays pruned
    assert torch.equal(from_sparse.fc1.weight, pruned.fc1.weight)

    save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    torch.save({"state_dict": dense.state_dict()}, tmp_path / "sd.pt")
    for source in ("plain.safetensors", "sd.pt"):
        assert torch.equal(started(tmp_path / source).fc3.weight, dense.fc3.weight)

    torch.save(build_model("lenet-5").state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError) as err:
        started(tmp_path / "other.pt")
    msg = str(err.value)
    assert "does not fit the model" in msg and "fc1.weight missing" in msg and "\n" not in msg
    wide = build_model("lenet-300-100", num_classes=20)
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match=r"fc3\.weight is \[20, 100\] there but \[10, 100\] here"):
        started(tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match="does not exist"):
        started(tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="not a finished haloprune run"):
        started(tmp_path)
