"""Evaluation: loss and accuracy of a model, and of pruned copies of it (pruned once, no fine-tuning)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Unpack

import torch
import torch.nn.functional as F
from torch import nn

from haloprune.core.params import SelectionArgs
from haloprune.data import SplitData, iterate_batches
from haloprune.pruning import (
    global_magnitude_prune,
    layerwise_magnitude_prune,
    recalibrate_batchnorm,
    sparsity_report,
    zero_small_weights,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` on ``(x, y)``."""
    return evaluate_batches(model, iterate_batches(x, y, batch_size, shuffle=False, generator=None))


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, float]:
    """Mean loss (``loss_fn``) and, for class logits, accuracy (%) over ``(x, y)`` batches: per example,
    or per position for logits ``(B, C, d1, ...)`` with targets ``(B, d1, ...)`` (a language model's
    next-token loss and accuracy, whatever the batches' lengths; see :func:`targets_in`)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    loss, correct, seen, classified = 0.0, 0, 0, True
    try:
        for xb, yb in batches:
            xb, yb = xb.to(device), yb.to(device)
            out = model(xb)
            n = targets_in(out, yb)
            loss += loss_fn(out, yb).item() * n
            seen += n
            if _is_classification(out, yb):
                correct += int((out.argmax(1) == yb).sum().item())
            else:
                classified = False
    finally:
        model.train(was_training)
    if seen == 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    return {"loss": loss / seen, "accuracy": 100.0 * correct / seen if classified else float("nan")}


def _is_classification(out: torch.Tensor, y: torch.Tensor) -> bool:
    """Class logits ``(B, C)`` for labels ``(B,)``, or ``(B, C, d1, ...)`` for labels ``(B, d1, ...)`` (one
    class per position: PyTorch's K-dimensional cross-entropy)."""
    return (
        out.dim() >= 2
        and y.dim() == out.dim() - 1
        and not y.is_floating_point()
        and len(y) == len(out)
        and out.shape[2:] == y.shape[1:]
    )


def targets_in(out: torch.Tensor, y: torch.Tensor) -> int:
    """What a batch's mean loss is a mean over: its examples, or for class logits its positions (``y``'s
    elements: one per example for ``(B, C)`` logits), so that batches of any length average right."""
    return y.numel() if _is_classification(out, y) else len(y)


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def pruned_record(
    model: nn.Module,
    data: SplitData,
    target: float,
    *,
    batch_size: int = 1000,
    splits: Sequence[str] = ("val", "test"),
    **selection: Unpack[SelectionArgs],
) -> dict[str, Any]:
    """One result row for an already pruned model: target and achieved sparsity (over the layers in
    ``scope``), nonzeros, accuracies (next-byte accuracies on a text corpus).

    ``accuracy`` is the test accuracy (NaN when the test split is not evaluated or empty). On a text corpus
    the row also holds each split's ``<split>_bits_per_byte``, its mean next-byte cross-entropy in bits
    (nats / ln 2: a byte is a token), ``bits_per_byte`` the test split's (lower is better), and
    ``corpus_sha256``, the digest of the corpus the numbers are of.
    """
    total = sparsity_report(model, **selection)[-1]
    row: dict[str, Any] = {"sparsity": target, "achieved_sparsity": total.sparsity, "nonzero": total.nonzero}
    text = data.spec.corpus is not None
    for split in splits:
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        result = evaluate(model, x, y, batch_size)
        row[f"{split}_accuracy"] = result["accuracy"]
        if text:
            row[f"{split}_bits_per_byte"] = result["loss"] / math.log(2)
    row["accuracy"] = row.get("test_accuracy", float("nan"))
    if text:
        row["bits_per_byte"] = row.get("test_bits_per_byte", float("nan"))
        row["corpus_sha256"] = data.sha256
    return row


def pruned_copy(
    model: nn.Module,
    sparsity: float,
    data: SplitData,
    *,
    per_layer: bool = False,
    recalibrate_bn: int = 0,
    batch_size: int = 1000,
    of: str = "all",
    zero_below: float = 0.0,
    **selection: Unpack[SelectionArgs],
) -> tuple[nn.Module, int]:
    """A copy of ``model`` pruned once by magnitude (the layers in ``scope``; ``sparsity`` a fraction of
    ``of`` = "all" or the "nonzero" weights, after zeroing those with ``|w| < zero_below``), its BatchNorm
    statistics re-estimated on ``recalibrate_bn`` training images (0: off); returns it and the number of
    images the statistics were re-estimated on (0: none, e.g. a network without BatchNorm)."""
    pruned = copy.deepcopy(model)
    if zero_below > 0:
        zero_small_weights(pruned, zero_below, **selection)
    prune = layerwise_magnitude_prune if per_layer else global_magnitude_prune
    prune(pruned, sparsity, of=of, **selection)
    if recalibrate_batchnorm(pruned, data.x_train, images=recalibrate_bn, batch_size=batch_size):
        return pruned, min(recalibrate_bn, len(data.x_train))
    return pruned, 0


def prune_and_evaluate(
    model: nn.Module,
    data: SplitData,
    sparsities: Sequence[float],
    *,
    per_layer: bool = False,
    batch_size: int = 1000,
    splits: Sequence[str] = ("val", "test"),
    recalibrate_bn: int = 0,
    on_pruned: Callable[[float, nn.Module], None] | None = None,
    of: str = "all",
    zero_below: float = 0.0,
    **selection: Unpack[SelectionArgs],
) -> list[dict[str, Any]]:
    """For each sparsity: prune a copy of ``model`` once by magnitude (the layers in ``scope``), evaluate
    it, no fine-tuning. ``recalibrate_bn``: training images to re-estimate BatchNorm statistics on after
    pruning (0: off). ``on_pruned(sparsity, pruned_copy)`` sees each pruned copy (e.g. to report its
    layers). ``of`` and ``zero_below``: see :func:`pruned_copy`."""
    rows = []
    for s in sparsities:
        pruned, recalibrated = pruned_copy(
            model,
            s,
            data,
            per_layer=per_layer,
            recalibrate_bn=recalibrate_bn,
            batch_size=batch_size,
            of=of,
            zero_below=zero_below,
            **selection,
        )
        row = pruned_record(pruned, data, s, batch_size=batch_size, splits=splits, **selection)
        if recalibrated:
            row["bn_recalibrated_images"] = recalibrated
        rows.append(row)
        if on_pruned is not None:
            on_pruned(s, pruned)
    return rows
