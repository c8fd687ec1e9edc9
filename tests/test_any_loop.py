"""HALO in a user's own training code: Adam/AdamW, any loop, attention and tied weights, masks that hold."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import haloprune
from haloprune import HALO, L1, global_magnitude_prune
from haloprune.config import OptimConfig, PenaltyConfig
from haloprune.core.params import select_parameters
from haloprune.training.loop import fit


@pytest.fixture(autouse=True)
def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALOPRUNE_COMPILE", "0")  # same arithmetic, no compile time


def _mlp(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def _batches(
    n: int = 8, dtype: torch.dtype = torch.float32, seed: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(32, 12, generator=g, dtype=dtype), torch.randint(0, 4, (32,), generator=g))
        for _ in range(n)
    ]


# ------------------------------------------------------------------------ Adam / AdamW, coupled


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_coupled_fused_adam_equals_adam_on_task_plus_halo_in_float64(opt_cls, weight_decay: float) -> None:
    ref_model, fused_model = _mlp(torch.float64), _mlp(torch.float64)
    ref = HALO(ref_model, xi=1e-3, psi=1e-2)
    ref_opt = opt_cls([*ref_model.parameters(), ref.lam], lr=1e-2, weight_decay=weight_decay)
    fast = HALO(fused_model, xi=1e-3, psi=1e-2, coupling="coupled")
    fast_opt = opt_cls(fused_model.parameters(), lr=1e-2, weight_decay=weight_decay)
    fast.attach(fast_opt)
    for x, y in _batches(dtype=torch.float64):
        ref_opt.zero_grad()
        (F.cross_entropy(ref_model(x), y) + ref()).backward()
        ref_opt.step()
        fast_opt.zero_grad()
        F.cross_entropy(fused_model(x), y).backward()
        fast_opt.step()
    for a, b in zip(ref_model.parameters(), fused_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ref.lam, fast.lam, rtol=1e-10, atol=1e-12)
    assert fast().requires_grad is False


def test_default_coupling_with_adam_is_coupled_and_target_mode_decoupled() -> None:
    model = _mlp()
    fixed = HALO(model, xi=1e-3, psi=1e-2)
    fixed.attach(torch.optim.AdamW(model.parameters()))
    target = HALO(model, target_sparsity=0.9)
    target.attach(torch.optim.AdamW(model.parameters()), total_steps=10)
    assert fixed._coupled and not target._coupled
    with pytest.raises(ValueError, match="decoupled"):
        HALO(model, target_sparsity=0.9, coupling="coupled").attach(torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="coupling applies to Adam"):
        HALO(model, xi=1e-3, psi=1e-2, coupling="coupled").attach(torch.optim.SGD(model.parameters(), lr=0.1))


def test_other_optimizer_is_refused_at_attach_with_one_line() -> None:
    model = _mlp()
    with pytest.raises(TypeError, match="not RMSprop; with another optimizer do not attach") as err:
        HALO(model, xi=1e-3, psi=1e-2).attach(torch.optim.RMSprop(model.parameters()))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="amsgrad"):
        HALO(model, xi=1e-3, psi=1e-2).attach(torch.optim.Adam(model.parameters(), amsgrad=True))


@pytest.mark.parametrize("prox", [False, True])
def test_decoupled_adamw_shrinks_and_prox_gives_exact_zeros(prox: bool) -> None:
    model = _mlp()
    halo = HALO(model, xi=0.05, psi=1.0, coupling="decoupled", prox=prox)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    halo.attach(opt)
    for _ in range(20):
        for x, y in _batches():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    zeros = sum(int((w == 0).sum()) for w in halo.weights()) / halo.num_penalized
    assert (zeros > 0.3) if prox else (zeros == 0.0)
    assert float(halo.lam.detach().min()) >= halo.lambda_min and torch.isfinite(halo()).item()


# ------------------------------------------------------------------------ target mode's budget


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_attach_computes_the_step_budget_from_the_scheduler(opt_cls) -> None:
    model = _mlp()
    kw = {"momentum": 0.9} if opt_cls is torch.optim.SGD else {}
    opt = opt_cls(model.parameters(), lr=0.05, **kw)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=40)
    halo = HALO(model, target_sparsity=0.9)
    halo.attach(opt, total_steps=40, scheduler=sched)
    probe_opt = opt_cls(_mlp().parameters(), lr=0.05, **kw)
    probe = torch.optim.lr_scheduler.OneCycleLR(probe_opt, max_lr=0.05, total_steps=40)
    budget, first_lr = 0.0, probe_opt.param_groups[0]["lr"]
    for _ in range(40):  # OneCycleLR cycles SGD's momentum too: each step counts lr_t / (1 - m_t)
        group = probe_opt.param_groups[0]
        budget += group["lr"] / (1 - group["momentum"]) if opt_cls is torch.optim.SGD else group["lr"]
        probe_opt.step()
        probe.step()
    assert halo.step_budget == pytest.approx(budget, rel=1e-9)
    assert opt.param_groups[0]["lr"] == pytest.approx(first_lr)  # the real scheduler is untouched
    assert sched.last_epoch == 0


@pytest.mark.parametrize(("lr", "batch", "epochs"), [(3e-3, 32, 30), (1e-2, 64, 30), (3e-3, 32, 60)])
def test_target_mode_with_adamw_reaches_the_target_with_the_defaults(
    lr: float, batch: int, epochs: int
) -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 12)
    y = (x[:, :3].sum(1) > 0).long() + 2 * (x[:, 3] > 0).long()
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * (512 // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    halo = HALO(model, target_sparsity=0.9)
    halo.attach(opt, total_steps=steps, scheduler=sched)
    for _ in range(epochs):
        for i in range(0, 512, batch):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + batch]), y[i : i + batch]).backward()
            opt.step()
            sched.step()
    sparsity = sum(int((w == 0).sum()) for w in halo.weights()) / halo.num_penalized
    # exact zeros, before any pruning (on Fashion-MNIST LeNet-300-100 it lands within 1.2 points of 95-99%)
    assert sparsity == pytest.approx(0.9, abs=0.04)


# ------------------------------------------------------------------------ masks hold without a call


def _pruned(seed: int = 0) -> nn.Module:
    model = _mlp(seed=seed)
    global_magnitude_prune(model, 0.7)
    return model


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    for x, y in _batches(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _zeros_hold(model: nn.Module, masks: dict[str, torch.Tensor]) -> bool:
    params = dict(model.named_parameters())
    return all(bool((params[n][~m] == 0).all()) for n, m in masks.items())


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.clone() for n, m in haloprune.pruning.masks.get_masks(model).items()}


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda ps: torch.optim.Adam(ps, lr=1e-2),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-2),
    ],
    ids=["sgd-momentum", "adam", "adamw-wd", "adamw-fused", "rmsprop"],
)
def test_pruned_weights_stay_zero_in_any_optimizer(make_opt) -> None:
    model = _mlp()
    opt = make_opt(model.parameters())
    _train(model, opt)  # momentum / moments from before pruning
    global_magnitude_prune(model, 0.7)
    masks = _masks(model)
    _train(model, opt)
    assert _zeros_hold(model, masks)
    _train(model, make_opt(model.parameters()))  # an optimizer made after pruning
    assert _zeros_hold(model, masks)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save", "load_state_dict"])
def test_masks_survive_copies_and_loading(how: str) -> None:
    model = _pruned()
    masks = _masks(model)
    if how == "deepcopy":
        other = copy.deepcopy(model)
    elif how in ("pickle", "torch.save"):
        buf = io.BytesIO()
        pickle.dump(model, buf) if how == "pickle" else torch.save(model, buf)
        buf.seek(0)
        other = pickle.load(buf) if how == "pickle" else torch.load(buf, weights_only=False)
    else:
        other = _mlp(seed=5)
        haloprune.load_state_dict(other, model.state_dict())
    _train(other, torch.optim.AdamW(other.parameters(), lr=1e-2))
    assert _zeros_hold(other, masks)
    if how == "deepcopy":  # the original is still linked to its own masks, not the copy's
        _train(model, torch.optim.SGD(model.parameters(), lr=0.5))
        assert _zeros_hold(model, masks)


def test_masks_hold_under_torch_compile() -> None:
    model = _pruned()
    masks = _masks(model)
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.Adam(compiled.parameters(), lr=1e-2)
    for x, y in _batches(4):
        opt.zero_grad()
        F.cross_entropy(compiled(x), y).backward()
        opt.step()
    assert _zeros_hold(model, masks)


# ------------------------------------------------------------------------ attention and tied weights


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 50, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok_emb.weight  # tied

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok_emb(idx)
        n = idx.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        h = h + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return self.head(h + self.mlp(h))


class TinyViT(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, stride=4)
        layer = nn.TransformerEncoderLayer(d, 2, 32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(h).mean(1))


def test_tied_embedding_is_penalised_pruned_and_counted_once() -> None:
    torch.manual_seed(0)
    model = TinyGPT()
    names = select_parameters(model, include=["tok_emb.weight"])
    assert names.count("tok_emb.weight") == 1 and "head.weight" not in names
    assert {"attn.in_proj_weight", "attn.out_proj.weight"} <= set(names)
    halo = HALO(model, xi=1e-4, psi=1e-2, include=["head.weight"])  # the alias names the same tensor
    assert halo.num_penalized == sum(p.numel() for n, p in model.named_parameters() if n in halo.param_names)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    halo.attach(opt)
    idx = torch.randint(0, 50, (4, 9))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
    global_magnitude_prune(model, 0.8, include=["tok_emb.weight"])
    assert model.head.weight is model.tok_emb.weight
    report = {r.name: r for r in haloprune.sparsity_report(model, include=["tok_emb.weight"])}
    assert "head.weight" not in report
    total = sum(r.params for r in report.values())
    zeros = sum(r.params - r.nonzero for r in report.values())
    assert zeros / total == pytest.approx(0.8, abs=1e-3)


def test_vit_attention_projections_are_selected_by_default_and_excludable() -> None:
    model = TinyViT()
    names = select_parameters(model)
    assert "encoder.layers.0.self_attn.in_proj_weight" in names
    assert "encoder.layers.1.self_attn.out_proj.weight" in names
    assert "patch.weight" in names and "head.weight" in names
    fewer = select_parameters(model, exclude=["patch.*", "head.*"])
    assert set(names) - set(fewer) == {"patch.weight", "head.weight"}
    halo = HALO(model, xi=1e-4, psi=1e-2, exclude=["patch.*"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    halo.attach(opt)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    global_magnitude_prune(model, 0.5)
    assert float((model.encoder.layers[0].self_attn.in_proj_weight == 0).float().mean()) > 0.1


@pytest.mark.parametrize("where", ["include", "exclude"])
def test_a_glob_that_matches_nothing_is_an_error(where: str) -> None:
    model = TinyViT()
    with pytest.raises(ValueError, match="enc0der"):
        select_parameters(model, **{where: ["enc0der.*"]})
    with pytest.raises(ValueError, match="enc0der"):
        HALO(model, xi=1e-4, psi=1e-2, **{where: ["enc0der.*"]})
    with pytest.raises(ValueError, match="enc0der"):
        global_magnitude_prune(model, 0.5, **{where: ["enc0der.*"]})


# ------------------------------------------------------------------------ strict arguments


def test_a_typo_in_a_penalty_keyword_is_a_type_error_naming_the_valid_ones() -> None:
    model = _mlp()
    with pytest.raises(TypeError, match=r"'lamda_min' \(did you mean 'lambda_min'\?\); valid: .*xi"):
        HALO(model, xi=1e-3, psi=1e-2, lamda_min=1e-4)
    with pytest.raises(TypeError, match="'psi'"):
        L1(model, xi=1e-3, psi=1.0)


def test_a_config_key_that_does_not_apply_is_an_error() -> None:
    with pytest.raises(ValueError, match="psi does not apply to penalty 'l1'"):
        PenaltyConfig(name="l1", xi=1e-4, psi=1.0)
    with pytest.raises(ValueError, match="betas"):
        OptimConfig(optimizer="sgd", betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="nesterov"):
        OptimConfig(optimizer="adamw", nesterov=True)
    with pytest.raises(ValueError, match="momentum is an SGD setting"):
        OptimConfig(optimizer="adam", momentum=0.5)
    assert OptimConfig(optimizer="adamw").momentum == 0.9  # the default is accepted: one key switches


# ------------------------------------------------------------------------ fit takes any loop's data


def test_fit_takes_a_dataloader_and_a_loss_function() -> None:
    model = _mlp()
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


@pytest.mark.parametrize("coupling", ["coupled", "decoupled"])
def test_compiled_adam_kernel_equals_the_eager_one(monkeypatch: pytest.MonkeyPatch, coupling: str) -> None:
    results = []
    for compile_ in ("0", "1"):
        monkeypatch.setenv("HALOPRUNE_COMPILE", compile_)
        model = _mlp()
        halo = HALO(model, xi=1e-3, psi=1e-2, coupling=coupling)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
        halo.attach(opt)
        _train(model, opt, steps=4)
        results.append([p.detach().clone() for p in [*model.parameters(), halo.lam]])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_empty_selection_is_a_one_line_cli_error(real_fmnist, tmp_path, capsys) -> None:
    from haloprune.cli import main

    args = ["train", "--data-dir", str(real_fmnist), "--quiet", "--set", f"out_dir='{tmp_path}'"]
    args += ["--set", "penalty.name='l1'", "--set", "penalty.xi=1e-5", "--set", "penalty.scope='conv'"]
    args += ["--set", "prune.scope='conv'", "--set", "data.train_subset=200", "--epochs", "1"]
    assert main(args) == 2  # LeNet-300-100 has no convolutions
    err = capsys.readouterr().err
    assert err.startswith("haloprune: error: LeNet") and "scope='conv'" in err and err.count("\n") == 1
