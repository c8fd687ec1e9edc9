"""``sparsevd``: Sparse Variational Dropout (Molchanov, Ashukha & Vetrov 2017).

The network's Linear/Conv layers become variational-dropout layers with a learned noise level per weight,
trained on the SGVB objective (Adam, KL weight ramped linearly from 0 to 1 over ``kl_warmup_epochs``).
The network chooses its own sparsity: weights with log α ≥ ``threshold`` (3 in the paper) are dropped;
each record reports that native sparsity and accuracy. For the requested target sparsities, the weights
are ranked by log α (the most noise first) and pruned once, without fine-tuning, like every other method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from haloprune.methods import svdo
from haloprune.methods.base import Context, Method, Outcome, Params
from haloprune.pruning import masks_from_scores
from haloprune.pruning.masks import attach_masks, masked_state_dict


class SparseVDParams(Params):
    lr: float = Field(1e-3, gt=0)
    kl_warmup_epochs: float = Field(5.0, ge=0)
    threshold: float = 3.0


class SparseVD(Method):
    Params = SparseVDParams

    def run(self, ctx: Context, sparsities: Sequence[float]) -> Outcome:
        p = self.params
        base = ctx.new_model()
        model = svdo.to_sparse_vd(base, threshold=p.threshold)
        optim = ctx.run.optim.model_copy(update={"optimizer": "adam", "lr": p.lr, "weight_decay": 0.0})
        n_train = len(ctx.data.y_train)
        steps_per_epoch = optim.steps_per_epoch(n_train)
        warmup = p.kl_warmup_epochs * steps_per_epoch

        def kl_term(m: torch.nn.Module, step: int) -> torch.Tensor:
            return svdo.linear_kl_warmup(step, warmup) * svdo.kl_divergence(m) / n_train

        ctx.fit(
            model,
            optim,
            extra_loss=kl_term,
        )
        model.eval()
        native = svdo.to_pruned_dense(model, base, threshold=p.threshold)
        native_record = ctx.record(native, svdo.sparsity(model, p.threshold))
        extra = {
            "native_sparsity": native_record["achieved_sparsity"],
            "native_accuracy": native_record["accuracy"],
            "native_val_accuracy": native_record["val_accuracy"],
        }
        dense = svdo.to_pruned_dense(model, base, threshold=float("inf"))
        scores = {
            f"{n}.weight" if n else "weight": -la
            for n, la in ((k.removesuffix(".weight"), v) for k, v in svdo.log_alpha(model).items())
        }
        records = []
        for s in sparsities:
            pruned = ctx.prune_copy(dense, 0.0)
            attach_masks(pruned, masks_from_scores(scores, s))
            records.append(ctx.record(pruned, s, **extra))
        return Outcome(records, ctx.run.optim.epochs, {"model": masked_state_dict(native)})
