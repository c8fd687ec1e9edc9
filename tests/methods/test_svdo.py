"""Sparse variational dropout's layers (haloprune.methods.svdo): conversion, the KL term, pruning to dense."""

from __future__ import annotations

import copy
import io
import itertools
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from haloprune.methods.svdo import (
    Conv2dSVDO,
    LinearSVDO,
    elbo_loss,
    kl_divergence,
    linear_kl_warmup,
    log_alpha,
    sparsity,
    svdo_layers,
    to_pruned_dense,
    to_sparse_vd,
)
from haloprune.models import build_model
from haloprune.pruning.masks import get_masks, load_state_dict, masked_state_dict

LENETS = ["lenet-300-100", "lenet-5", "lenet-5-caffe"]


FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _randomise(svd: nn.Module, seed: int = 1) -> None:
    """Spread log σ² so that a good share of the weights crosses the threshold either way."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in svdo_layers(svd).values():
            layer.log_sigma2.copy_(torch.empty(layer.log_sigma2.shape).uniform_(-12, 0, generator=g))


@pytest.mark.parametrize("name", LENETS)
def test_to_sparse_vd_keeps_names_and_shapes(name: str) -> None:
    model = build_model(name)
    svd = to_sparse_vd(model)
    orig = dict(model.named_parameters())
    new = dict(svd.named_parameters())
    assert {k for k in new if not k.endswith("log_sigma2")} == set(orig)
    for k, p in orig.items():
        assert new[k].shape == p.shape
        assert torch.equal(new[k], p)
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            expected = Conv2dSVDO if isinstance(mod, nn.Conv2d) else LinearSVDO
            assert isinstance(svd.get_submodule(mod_name), expected)
            assert new[f"{mod_name}.log_sigma2"].shape == mod.weight.shape
            assert torch.all(new[f"{mod_name}.log_sigma2"] == -10)
    assert set(log_alpha(svd)) == {k for k in orig if k.endswith("weight")}
    # the original model is untouched
    assert not any(isinstance(m, (LinearSVDO, Conv2dSVDO)) for m in model.modules())


@pytest.mark.parametrize("name", LENETS)
def test_initial_eval_network_matches_original(name: str) -> None:
    model = build_model(name).eval()
    svd = to_sparse_vd(model).eval()
    la = torch.cat([v.flatten() for v in log_alpha(svd).values()])
    # log σ² = -10 against |θ| ~ U(±1/sqrt(fan_in)): median log α ≈ -2 (fc1) ... -5.5 (conv1)
    assert la.median() < -1.5
    # only the tiniest weights (|θ| < e^-6.5 ≈ 1.5e-3) start above the threshold, about 3-4 %
    assert sparsity(svd) < 0.06
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        ref, out = model(x), svd(x)
    # measured max |diff| ≈ 3e-3 against logits of magnitude ≈ 0.2
    assert (out - ref).abs().max() <= 1e-2


def test_kl_finite_and_decreasing_in_log_sigma2() -> None:
    layer = LinearSVDO(20, 10)
    with torch.no_grad():
        layer.weight.fill_(0.1)  # log θ² ≈ -4.6, so log α stays inside the [-10, 10] clip below
    kls = []
    for ls2 in [-14.0, -10.0, -6.0, -2.0, 0.0, 2.0, 5.0]:
        with torch.no_grad():
            layer.log_sigma2.fill_(ls2)
        kl = layer.kl()
        assert torch.isfinite(kl) and kl.ndim == 0
        kls.append(kl.item())
    assert all(a > b for a, b in itertools.pairwise(kls))
    assert kls[0] > 0  # positive quantity to minimise
    # the gradient points the same way: more dropout, lower penalty
    layer.log_sigma2.data.fill_(-8.0)
    layer.kl().backward()
    assert layer.log_sigma2.grad is not None and torch.all(layer.log_sigma2.grad < 0)


def test_kl_matches_paper_formula_and_sums_layers() -> None:
    svd = to_sparse_vd(build_model("lenet-5"))
    _randomise(svd)
    total = torch.zeros(())
    for layer in svdo_layers(svd).values():
        la = (layer.log_sigma2 - torch.log(layer.weight**2 + 1e-32)).clamp(-10, 10)
        k1, k2, k3 = 0.63576, 1.87320, 1.48695
        neg_kl = k1 * torch.sigmoid(k2 + k3 * la) - 0.5 * torch.log1p(torch.exp(-la)) - k1
        assert torch.allclose(layer.kl(), -neg_kl.sum(), rtol=1e-4)
        total = total + layer.kl()
    assert torch.allclose(kl_divergence(svd), total)
    # elbo = CE + w * KL / N
    y = torch.randint(0, 10, (8,))
    logits = torch.randn(8, 10)
    ce = nn.functional.cross_entropy(logits, y)
    assert torch.allclose(elbo_loss(logits, y, svd, 1000, 0.0), ce)
    assert torch.allclose(elbo_loss(logits, y, svd, 1000, 0.5), ce + 0.5 * total / 1000)


def test_log_alpha_is_clipped() -> None:
    layer = LinearSVDO(5, 3)
    with torch.no_grad():
        layer.weight[0].zero_()
        layer.weight[1].fill_(100.0)
    la = layer.log_alpha
    assert torch.all(la[0] == 10) and torch.all(la[1] == -10)


@pytest.mark.parametrize("name", LENETS)
def test_to_pruned_dense_equals_svdo_eval(name: str) -> None:
    reference = build_model(name)
    svd = to_sparse_vd(reference)
    _randomise(svd)
    with torch.no_grad():
        for p in svd.parameters():
            if p.ndim == 1:
                p.add_(0.1)  # biases differ from the reference's: they must be copied over
    sp = sparsity(svd)
    assert 0.2 < sp < 0.9
    dense = to_pruned_dense(svd, reference).eval()
    assert type(dense) is type(reference)
    assert not any(isinstance(m, (LinearSVDO, Conv2dSVDO)) for m in dense.modules())
    assert not get_masks(reference)  # reference untouched

    masks = get_masks(dense)
    las = log_alpha(svd)
    assert set(masks) == set(las)
    n_zero = 0
    for pname, mask in masks.items():
        assert mask.dtype == torch.bool
        assert torch.equal(mask, las[pname] < 3.0)
        w = dense.get_parameter(pname)
        assert torch.all(w[~mask] == 0)
        n_zero += int((~mask).sum())
    assert n_zero / sum(m.numel() for m in masks.values()) == pytest.approx(sp)

    x = torch.randn(32, 1, 28, 28)
    svd.eval()
    with torch.no_grad():
        expected = svd(x)
        assert (dense(x) - expected).abs().max() <= 1e-5
        # masks survive deepcopy, state_dict round-trips and torch.save
        copied = copy.deepcopy(dense)
        assert set(get_masks(copied)) == set(masks)
        assert (copied(x) - expected).abs().max() <= 1e-5
        sd = masked_state_dict(dense)
        assert all(f"{p}_mask" in sd for p in masks)
        fresh = build_model(name)
        load_state_dict(fresh, sd)
        fresh.eval()
        assert all(torch.equal(get_masks(fresh)[p], m) for p, m in masks.items())
        assert (fresh(x) - expected).abs().max() <= 1e-5
        buf = io.BytesIO()
        torch.save(dense, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert set(get_masks(loaded)) == set(masks)


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_training_forward_stochastic_eval_deterministic(name: str) -> None:
    svd = to_sparse_vd(build_model(name))
    _randomise(svd)
    x = torch.randn(8, 1, 28, 28)
    svd.train()
    a, b = svd(x), svd(x)
    assert not torch.allclose(a, b)
    svd.eval()
    with torch.no_grad():
        c, d = svd(x), svd(x)
    assert torch.equal(c, d)


def test_local_reparameterisation_moments() -> None:
    """The sampled outputs have mean x θᵀ + b and variance x² σ²ᵀ (conv: the same with convolutions)."""
    torch.manual_seed(0)
    lin = LinearSVDO(6, 3)
    conv = Conv2dSVDO(2, 3, 3, padding=1)
    for layer in (lin, conv):
        with torch.no_grad():
            layer.log_sigma2.uniform_(-4, -1)
        x = torch.randn(1, 6) if layer is lin else torch.randn(1, 2, 4, 4)
        xs = x.expand(20000, *x.shape[1:])
        with torch.no_grad():
            samples = layer.train()(xs)
            mean = layer._op(x, layer.weight, layer.bias)
            var = layer._op(x * x, layer.log_sigma2.exp(), None)
        assert torch.allclose(samples.mean(0, keepdim=True), mean, atol=4 * (var.max() / 20000) ** 0.5)
        assert torch.allclose(samples.var(0, keepdim=True), var, rtol=0.1, atol=1e-4)


def test_sparsity_and_warmup_helpers() -> None:
    svd = to_sparse_vd(build_model("lenet-300-100"))
    with torch.no_grad():
        svd.fc1.weight.zero_()  # log α clipped to 10 → all of fc1 dropped
    las = log_alpha(svd)
    assert torch.all(las["fc1.weight"] == 10)
    dropped = sum(int((v >= 3).sum()) for v in las.values())
    total = sum(v.numel() for v in las.values())
    assert sparsity(svd) == pytest.approx(dropped / total)
    assert sparsity(svd) >= svd.fc1.weight.numel() / total
    assert sparsity(svd, threshold=11.0) == 0.0
    assert [linear_kl_warmup(s, 4) for s in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert linear_kl_warmup(3, 0) == 1.0
    with pytest.raises(ValueError):
        sparsity(build_model("lenet-300-100"))


def test_sparse_vd_sparsifies_synthetic_problem() -> None:
    """A separable 2-class problem read through 2 of 50 features: SparseVD drops nearly all the rest."""
    torch.manual_seed(0)
    n, d = 1000, 50
    x = torch.randn(n, d)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(d, 20), nn.ReLU(), nn.Linear(20, 2))
    svd = to_sparse_vd(model)
    opt = torch.optim.Adam(svd.parameters(), lr=1e-3)
    epochs, warmup = 20, 5
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        svd.train()
        for idx in torch.randperm(n, generator=g).split(50):
            loss = elbo_loss(svd(x[idx]), y[idx], svd, n, linear_kl_warmup(epoch, warmup))
            opt.zero_grad()
            loss.backward()
            opt.step()
    svd.eval()
    with torch.no_grad():
        acc = (svd(x).argmax(1) == y).float().mean().item()
    sp = sparsity(svd)
    assert acc > 0.95, acc
    assert sp > 0.9, sp
    # what survives in the first layer reads almost only the two informative features
    kept_in = (log_alpha(svd)["0.weight"] < 3).any(0)
    assert kept_in[:2].all() and kept_in[2:].sum() <= 5
    dense = to_pruned_dense(svd, model).eval()
    with torch.no_grad():
        assert (dense(x) - svd(x)).abs().max() <= 1e-5


@pytest.mark.slow
def test_sparse_vd_lenet300_fashion_mnist() -> None:
    """LeNet-300-100 on real Fashion-MNIST, the paper's recipe (Adam 1e-3, batch 100, KL warm-up)."""
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist")
    from haloprune.data import iterate_batches, load_dataset

    start = time.perf_counter()
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist", val_size=5000)
    reference = build_model("lenet-300-100")
    svd = to_sparse_vd(reference)
    opt = torch.optim.Adam(svd.parameters(), lr=1e-3)
    n = len(data.x_train)
    steps_per_epoch = -(-n // 100)
    epochs, warmup_epochs = 6, 2
    g = torch.Generator().manual_seed(0)
    step = 0
    for _ in range(epochs):
        svd.train()
        for xb, yb in iterate_batches(data.x_train, data.y_train, 100, shuffle=True, generator=g):
            kl_weight = linear_kl_warmup(step, warmup_epochs * steps_per_epoch)  # per-step linear ramp
            loss = elbo_loss(svd(xb), yb, svd, n, kl_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    svd.eval()
    with torch.no_grad():
        acc = (svd(data.x_test).argmax(1) == data.y_test).float().mean().item()
    sp = sparsity(svd)
    dense = to_pruned_dense(svd, reference).eval()
    with torch.no_grad():
        dense_acc = (dense(data.x_test).argmax(1) == data.y_test).float().mean().item()
    elapsed = time.perf_counter() - start
    print(
        f"SparseVD LeNet-300-100 F-MNIST: {epochs} epochs, sparsity {sp:.4f}, acc {acc:.4f}, {elapsed:.1f}s"
    )
    assert sp > 0.92, sp  # measured 0.9415 (fc1 ≈ 0.95, fc2 ≈ 0.91, fc3 ≈ 0.36)
    assert acc > 0.82, acc  # measured 0.8569 (chance is 0.10)
    assert dense_acc == acc
