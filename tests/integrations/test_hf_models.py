"""haloprune on the model classes people train: real ``transformers`` models built from small configs (no
downloads) — GPT-2 (``Conv1D`` layers, LM head tied to the token embedding), Llama (grouped-query
attention, no biases, untied LM head), BERT and ViT. For each: what is penalised by default, exact
global pruning over every transformer block, HALO in the loss and fused into AdamW in target mode, masks
through further AdamW steps, checkpoints that load in plain PyTorch (haloprune not imported) and through
``save_pretrained`` / ``from_pretrained`` with no warning, and masks restored from the zeros."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

import haloprune
from haloprune import HALO, global_magnitude_prune, restore_masks, sparsity_report
from haloprune.core.errors import SelectionError
from haloprune.core.params import select_parameters
from haloprune.pruning.masks import get_masks
from tests.integrations.hf_tiny import batch, bert, build, gpt2, llama, vit

pytestmark = pytest.mark.usefixtures("one_thread")


# name -> (builder, Auto class, default penalised parameters of block 0 (relative), other defaults,
#          parameters that must stay dense by default)
CASES = {
    "gpt2": (
        gpt2,
        AutoModelForCausalLM,
        ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"],
        [],
        ["transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"],
    ),
    "llama": (
        llama,
        AutoModelForCausalLM,
        [
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ],
        [],
        ["model.embed_tokens.weight", "lm_head.weight"],
    ),
    "bert": (
        bert,
        AutoModelForSequenceClassification,
        [
            "attention.self.query.weight",
            "attention.self.key.weight",
            "attention.self.value.weight",
            "attention.output.dense.weight",
            "intermediate.dense.weight",
            "output.dense.weight",
        ],
        ["bert.pooler.dense.weight", "classifier.weight"],
        ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight"],
    ),
    "vit": (
        vit,
        AutoModelForImageClassification,
        [
            "attention.q_proj.weight",
            "attention.k_proj.weight",
            "attention.v_proj.weight",
            "attention.o_proj.weight",
            "mlp.fc1.weight",
            "mlp.fc2.weight",
        ],
        ["vit.embeddings.patch_embeddings.projection.weight", "classifier.weight"],
        ["vit.embeddings.position_embeddings", "vit.embeddings.cls_token"],
    ),
}
BLOCKS = {
    "gpt2": "transformer.h.{}.",
    "llama": "model.layers.{}.",
    "bert": "bert.encoder.layer.{}.",
    "vit": "vit.layers.{}.",
}


def train(model: torch.nn.Module, name: str, opt: torch.optim.Optimizer, steps: int, halo=None) -> None:
    model.train()
    for step in range(steps):
        opt.zero_grad()
        loss = model(**batch(name, seed=step)).loss
        if halo is not None and halo.in_loss:
            loss = loss + halo()
        loss.backward()
        opt.step()


def logits(model: torch.nn.Module, name: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch(name, seed=99).items() if k != "labels"}).logits


def zeros_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (model.get_parameter(n) == 0) for n in select_parameters(model)}


@pytest.mark.parametrize("name", list(CASES))
def test_default_selection_covers_every_block_and_leaves_embeddings_dense(name: str) -> None:
    model = build(name)
    _, _, block_params, others, dense = CASES[name]
    layers = model.config.num_hidden_layers
    expected = [BLOCKS[name].format(i) + p for i in range(layers) for p in block_params] + others
    assert sorted(select_parameters(model)) == sorted(expected)
    assert not set(dense) & set(select_parameters(model))
    assert HALO(model, xi=1e-4, psi=1e-2).param_names == select_parameters(model)
    # what sparsity_report counts is that selection, once per tensor
    rows = sparsity_report(model)
    assert [r.name for r in rows[:-1]] == select_parameters(model)
    # a user can prune an embedding / LM head by naming it
    head = "lm_head.weight" if name in ("gpt2", "llama") else dense[0]
    chosen = [model.get_parameter(n) for n in select_parameters(model, include=[head])]
    assert any(p is model.get_parameter(head) for p in chosen)  # GPT-2's is its (tied) token embedding


@pytest.mark.parametrize("name", list(CASES))
def test_global_prune_is_exact_over_every_block(name: str) -> None:
    model = build(name)
    global_magnitude_prune(model, 0.9)
    total = sparsity_report(model)[-1]
    assert total.params - total.nonzero == round(0.9 * total.params)
    for i in range(model.config.num_hidden_layers):
        block = [r for r in sparsity_report(model)[:-1] if r.name.startswith(BLOCKS[name].format(i))]
        assert len(block) == len(CASES[name][2]) and all(r.sparsity > 0.5 for r in block)


@pytest.mark.parametrize("name", list(CASES))
def test_halo_in_the_loss_and_fused_target_mode_then_masks_hold(name: str) -> None:
    # in the loss (autograd), with AdamW on weights and λ
    model = build(name)
    halo = HALO(model, xi=1e-3, psi=1e-2, fused=False)
    opt = torch.optim.AdamW([*model.parameters(), *halo.parameters()], lr=1e-3)
    halo.attach(opt)
    lam0 = halo.lam.detach().clone()
    train(model, name, opt, 3, halo)
    assert not torch.equal(halo.lam.detach(), lam0)
    # fused into AdamW, target mode: ξ, ψ steered from the step budget
    model = build(name)
    halo = HALO(model, target_sparsity=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    halo.attach(opt, total_steps=12)
    train(model, name, opt, 12, halo)
    assert halo.stats()["density"] < 1.0  # exact zeros appeared
    global_magnitude_prune(model, 0.5)
    masks = {n: m.clone() for n, m in get_masks(model).items()}
    assert set(masks) == set(select_parameters(model))
    # further AdamW steps (a new optimizer with weight decay) do not revive a pruned weight
    train(model, name, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), 3)
    for n, m in masks.items():
        assert (model.get_parameter(n)[~m] == 0).all()


def _capture_transformers_warnings(caplog: pytest.LogCaptureFixture) -> None:
    transformers.logging.enable_propagation()
    caplog.set_level(logging.WARNING, logger="transformers")


@pytest.mark.parametrize("name", list(CASES))
def test_checkpoints_load_in_plain_pytorch_and_from_pretrained(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = build(name)
    global_magnitude_prune(model, 0.8)
    expected, zeros = logits(model, name), zeros_of(model)
    state = model.state_dict()
    assert not any(k.endswith("_mask") for k in state)
    assert set(state) == set(build(name, seed=1).state_dict())

    # plain PyTorch, strict, in a process that never imports haloprune
    torch.save(state, tmp_path / "sd.pt")
    torch.save(expected, tmp_path / "logits.pt")
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from hf_tiny import build, batch
model = build({name!r})
model.load_state_dict(torch.load({str(tmp_path / "sd.pt")!r}, weights_only=True), strict=True)
model.eval()
with torch.no_grad():
    out = model(**{{k: v for k, v in batch({name!r}, seed=99).items() if k != "labels"}}).logits
torch.testing.assert_close(out, torch.load({str(tmp_path / "logits.pt")!r}))
assert "haloprune" not in sys.modules
print("plain load ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plain load ok" in done.stdout

    # save_pretrained -> from_pretrained: no warning, zeros intact
    _capture_transformers_warnings(caplog)
    model.save_pretrained(tmp_path / "hf")
    loaded = CASES[name][1].from_pretrained(tmp_path / "hf")
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []  # no load report of unused / missing weights (tests/test_export.py checks it shows)
    torch.testing.assert_close(logits(loaded, name), expected)
    for n, z in zeros.items():
        assert torch.equal(loaded.get_parameter(n) == 0, z)

    # masks back from the zeros, then fine-tuning keeps them
    masks = restore_masks(loaded)
    assert masks.keys() == get_masks(model).keys()
    for n, m in get_masks(model).items():
        assert torch.equal(masks[n], m)
    train(loaded, name, torch.optim.AdamW(loaded.parameters(), lr=1e-2), 3)
    for n, z in zeros.items():
        assert (loaded.get_parameter(n)[z] == 0).all()
    assert not torch.allclose(logits(loaded, name), expected)  # it did train

    # haloprune.load_state_dict restores them too; remove_masks makes pruning permanent
    fresh = build(name, seed=2)
    haloprune.load_state_dict(fresh, state)
    assert {n: m for n, m in get_masks(fresh).items()}.keys() == get_masks(model).keys()
    haloprune.remove_masks(fresh)
    assert get_masks(fresh) == {}
    torch.testing.assert_close(logits(fresh, name), expected)


def test_a_model_with_nothing_to_prune_is_refused() -> None:
    class Table(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.norm = torch.nn.LayerNorm(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.emb(x))

    for call in (lambda m: HALO(m, xi=1e-3, psi=1e-3), lambda m: global_magnitude_prune(m, 0.5)):
        with pytest.raises(
            SelectionError, match=r"no parameters to (penalise|prune) in the default selection"
        ):
            call(Table())
    # naming the table works
    model = Table()
    global_magnitude_prune(model, 0.5, include=["emb.weight"])
    assert sparsity_report(model, include=["emb.weight"])[-1].sparsity == 0.5


# ---------------------------------------------------------------- the Trainer callback on GPT-2


class Text(torch.utils.data.Dataset):
    """Byte-level windows of real text: the Python source of torch's ``nn.Module`` (vocabulary 256)."""

    def __init__(self, length: int = 16) -> None:
        source = Path(torch.nn.modules.module.__file__).read_bytes()
        ids = torch.tensor(list(source), dtype=torch.long)
        self.windows = ids[: len(ids) // length * length].view(-1, length)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.windows[i], "labels": self.windows[i]}


def _trainer_args(out: Path, steps: int, **kw) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **kw,
    )


def test_trainer_callback_on_gpt2_ends_at_the_target_over_the_blocks(tmp_path: Path) -> None:
    from haloprune.integrations.transformers import HALOTrainerCallback

    model = build("gpt2")
    cb = HALOTrainerCallback(target_sparsity=0.8)
    trainer = transformers.Trainer(
        model=model, args=_trainer_args(tmp_path, 40), train_dataset=Text(), callbacks=[cb]
    )
    trainer.train()
    rows = sparsity_report(model)
    assert all(r.name.startswith("transformer.h.") for r in rows[:-1])  # the blocks, nothing else
    total = rows[-1]  # exactly the target (more only where training left more exact zeros)
    assert round(0.8 * total.params) <= total.params - total.nonzero <= round(0.85 * total.params)
    assert min(r.sparsity for r in rows[:-1]) > 0.3  # every layer of every block pruned
    assert (model.transformer.wte.weight != 0).all()  # the tied embedding / LM head stays dense


def test_trainer_checkpoint_resumes_with_masks_that_hold(tmp_path: Path) -> None:
    """A pruned GPT-2 fine-tuned with HALO; the run resumed from ``checkpoint-N`` in a model that has no
    masks (as in a new process) gets them back from the callback's state, and they hold."""
    from haloprune.integrations.transformers import HALOTrainerCallback

    def run(model: torch.nn.Module, steps: int, resume: bool) -> None:
        cb = HALOTrainerCallback(xi=1e-5, psi=1e-3, prune_at_end=False)
        args = _trainer_args(tmp_path, steps, save_strategy="steps", save_steps=10)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Text(), callbacks=[cb])
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10") if resume else None)

    model = build("gpt2")
    masks = {n: m.clone() for n, m in global_magnitude_prune(model, 0.7).items()}
    run(model, 10, resume=False)
    fresh = build("gpt2", seed=5)
    assert get_masks(fresh) == {}
    run(fresh, 20, resume=True)
    assert get_masks(fresh).keys() == masks.keys()
    for n, m in masks.items():
        assert torch.equal(get_masks(fresh)[n], m)
        assert (fresh.get_parameter(n)[~m] == 0).all()


# ---------------------------------------------------------------- structured: GPT-2's heads and neurons


def test_group_halo_on_gpt2_slims_to_fewer_heads_and_neurons_with_equal_outputs() -> None:
    from haloprune.penalties import build_penalty
    from haloprune.pruning import count_cost, group_prune, slim

    model = build("gpt2")
    halo = build_penalty("group-halo", model, xi=1e-3, psi=1e-2)
    # a group is a whole head (q, k, v columns of c_attn and rows of c_proj) or an MLP neuron
    assert halo.groups.block_names() == [
        f"transformer.h.{i}.{kind}" for i in range(2) for kind in ("attn.heads", "mlp.neurons")
    ]
    assert halo.groups.counts == [4, 256, 4, 256] and halo.groups.sizes == [3 * 64 * 16 + 16 * 64, 128] * 2
    opt = torch.optim.AdamW([*model.parameters(), *halo.parameters()], lr=1e-3)
    halo.attach(opt)
    train(model, "gpt2", opt, 3, halo)
    x = batch("gpt2")["input_ids"]
    dense = count_cost(model, x, nonzero_only=False)
    group_prune(model, x, params=dense.params // 3)
    with pytest.warns(UserWarning, match="only its declared units"):
        small = slim(model, x)
    heads = [small.transformer.h[i].attn.num_heads for i in range(2)]
    neurons = [small.transformer.h[i].mlp.c_fc.nf for i in range(2)]
    assert sum(heads) < 8 and sum(neurons) < 512, (heads, neurons)
    assert count_cost(small, x, nonzero_only=False).params <= dense.params // 3
    torch.testing.assert_close(logits(small, "gpt2"), logits(model, "gpt2"), atol=1e-5, rtol=1e-5)
