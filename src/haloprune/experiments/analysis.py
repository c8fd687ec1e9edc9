"""Looking inside trained networks: per-layer sparsity, HALO's λ against |w|, activation spectra.

The eigen-energy spectrum follows the HALO paper (Fig. 5c): for each hidden layer, the covariance of its
per-neuron (Linear) or per-channel (Conv, averaged over positions) activations over the training set;
its eigenvalues, sorted and normalised to sum to one, show how many directions the layer really uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from haloprune.build import build_network
from haloprune.config import PruneConfig, RunConfig
from haloprune.core.io import load_torch
from haloprune.core.layers import DENSE
from haloprune.core.params import select_parameters
from haloprune.models import build_model
from haloprune.pruning import global_magnitude_prune, sparsity_report
from haloprune.pruning.masks import load_state_dict


def load_state_model(
    path: str | Path, run: str | dict[str, Any], sparsity: float | None = None
) -> tuple[nn.Module, dict]:
    """A model rebuilt from a sweep job's saved state (masks included), pruned to ``sparsity`` if given.

    ``run`` is the job's run part (data, model: the network is shaped for the data and pruned as its
    ``prune`` says: scope, include / exclude, ``of``), or just a model name for a model built with its
    defaults."""
    state = load_torch(path)
    prune = PruneConfig()
    if isinstance(run, str):
        model = build_model(run)
    else:
        cfg = RunConfig.model_validate(run)
        model, prune = build_network(cfg), cfg.prune
    load_state_dict(model, state["model"], restore=False)
    if sparsity is not None:
        global_magnitude_prune(model, sparsity, of=prune.of, **prune.selection())
    model.eval()
    return model, state


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """``{layer weight: sparsity}`` (no total row)."""
    return {r.name: r.sparsity for r in sparsity_report(model)[:-1]}


def lambda_and_weights(
    model: nn.Module, penalty_state: dict[str, Any] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """HALO's flat λ and the matching flat |w| (in penalised-parameter order), from a saved state."""
    if not penalty_state or "lam" not in penalty_state:
        raise ValueError("no per-weight λ in this state")
    lam = penalty_state["lam"].detach().float()
    names = penalty_state.get("_extra_state", {}).get("param_names") or select_parameters(model)
    w = torch.cat([model.get_parameter(n).detach().abs().flatten() for n in names])
    if w.numel() != lam.numel():
        raise ValueError(f"λ has {lam.numel()} entries, the penalised weights {w.numel()}")
    return lam, w


@torch.no_grad()
def activation_spectra(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """Sorted eigenvalues (normalised to sum 1) of the activation covariance of every hidden layer."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, DENSE)][:-1]
    sums: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}
    handles = []
    for name, module in layers:

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor, name: str = name) -> None:
            act = torch.relu(out)
            per_channel = act.mean(dim=tuple(range(2, act.ndim))) if act.ndim > 2 else act  # over positions
            sums[name].append(per_channel.double())

        handles.append(module.register_forward_hook(hook))
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
    spectra = {}
    for name, chunks in sums.items():
        a = torch.cat(chunks)
        cov = torch.cov(a.T)
        ev = torch.linalg.eigvalsh(cov).clamp_min(0).flip(0)
        spectra[name] = (ev / ev.sum().clamp_min(1e-30)).float()
    return spectra
