"""The layers and loss of Sparse Variational Dropout (Molchanov, Ashukha & Vetrov, ICML 2017).

"Variational Dropout Sparsifies Deep Neural Networks" trains a factorised Gaussian posterior
``w ~ N(θ, σ²)`` for every weight under the log-uniform prior, with the dropout rate of a weight
expressed as ``α = σ² / θ²``. Weights whose ``log α`` grows large carry only noise and are dropped: the
network sparsifies itself, with no pruning schedule and no target sparsity.

This module holds the variational layers (:class:`LinearSVDO`, :class:`Conv2dSVDO`), the conversion of a
model to them and back (:func:`to_sparse_vd`, :func:`to_pruned_dense`) and the objective
(:func:`elbo_loss`). The ``sparsevd`` method that trains with them is :mod:`haloprune.methods.variational`.

Usage, in a plain loop where the caller ramps ``kl_weight`` from 0 to 1:

>>> from haloprune.models import build_model
>>> from haloprune.pruning.masks import get_masks
>>> x_train, y_train = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
>>> svd = to_sparse_vd(build_model("lenet-300-100"))
>>> opt = torch.optim.Adam(svd.parameters(), lr=1e-3)
>>> for epoch in range(3):
...     w = linear_kl_warmup(epoch, 5)  # 0, 0.2, 0.4 (then up to 1 at epoch 5)
...     for xb, yb in zip(x_train.split(64), y_train.split(64)):
...         loss = elbo_loss(svd(xb), yb, svd, n_train=len(x_train), kl_weight=w)
...         opt.zero_grad()
...         loss.backward()
...         opt.step()
>>> svd = svd.eval()  # deterministic, pruned network (log α < threshold)
>>> dense = to_pruned_dense(svd, build_model("lenet-300-100"))  # plain layers + haloprune masks
>>> sorted(get_masks(dense))
['fc1.weight', 'fc2.weight', 'fc3.weight']
>>> torch.testing.assert_close(dense(x_train), svd(x_train))

Conventions follow the authors' code: ``log_sigma2`` starts at -10, ``log α = log σ² − log θ²`` is clipped
to [-10, 10], and the evaluation network keeps the weights with ``log α < 3``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from haloprune.core.params import unwrap
from haloprune.pruning import masks as _masks

__all__ = [
    "DEFAULT_THRESHOLD",
    "LOG_ALPHA_CLIP",
    "LOG_SIGMA2_INIT",
    "Conv2dSVDO",
    "LinearSVDO",
    "elbo_loss",
    "kl_divergence",
    "linear_kl_warmup",
    "log_alpha",
    "sparsity",
    "svdo_layers",
    "to_pruned_dense",
    "to_sparse_vd",
]

DEFAULT_THRESHOLD = 3.0
LOG_SIGMA2_INIT = -10.0
LOG_ALPHA_CLIP = 10.0

# Molchanov et al. (2017), eq. 14: -KL(q || p) ≈ k1 σ(k2 + k3 log α) − ½ log(1 + 1/α) − k1.
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695
_EPS = 1e-8  # added to the output variance before the square root (keeps its gradient finite)


class _SVDOMixin(nn.Module):
    """What the linear and the conv SVDO layers share: log α, the KL term and the eval mask."""

    weight: nn.Parameter
    log_sigma2: nn.Parameter
    bias: nn.Parameter | None
    threshold: float

    def _init_svdo(self, weight_shape: tuple[int, ...], bias: bool, threshold: float, **factory) -> None:
        self.weight = nn.Parameter(torch.empty(weight_shape, **factory))
        self.log_sigma2 = nn.Parameter(torch.full(weight_shape, LOG_SIGMA2_INIT, **factory))
        if bias:
            self.bias = nn.Parameter(torch.zeros(weight_shape[0], **factory))
        else:
            self.register_parameter("bias", None)
        self.threshold = float(threshold)

    @classmethod
    @torch.no_grad()
    def _replacing(cls, layer: nn.Module, threshold: float, *args: Any, **kwargs: Any) -> Any:
        """A layer built as ``cls(*args, **kwargs)`` beside ``layer`` (its device, dtype and whether it has a
        bias), holding copies of its θ and bias."""
        w = layer.weight
        new = cls(
            *args, bias=layer.bias is not None, threshold=threshold, device=w.device, dtype=w.dtype, **kwargs
        )
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        return new

    @property
    def log_alpha(self) -> torch.Tensor:
        """``clip(log σ² − log θ², −10, 10)`` per weight (differentiable)."""
        la = self.log_sigma2 - 2.0 * torch.log(1e-16 + self.weight.abs())
        return la.clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Bool mask of the weights the evaluation network keeps (``log α < threshold``)."""
        t = self.threshold if threshold is None else threshold
        with torch.no_grad():
            return self.log_alpha < t

    def pruned_weight(self, threshold: float | None = None) -> torch.Tensor:
        """θ with the dropped weights (``log α >= threshold``) set to exactly zero."""
        return self.weight * self.keep_mask(threshold).to(self.weight.dtype)

    def kl(self) -> torch.Tensor:
        """Approximate ``KL(q(w) || p(w))`` summed over the weights (a positive quantity to minimise).

        Uses the paper's fit ``−KL ≈ k1·sigmoid(k2 + k3·log α) − ½·log1p(exp(−log α)) − k1`` and returns its
        negative. It decreases monotonically as ``log α`` grows (more dropout, smaller penalty).
        """
        la = self.log_alpha
        neg_kl = _K1 * torch.sigmoid(_K2 + _K3 * la) - 0.5 * F.softplus(-la) - _K1
        return -neg_kl.sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._op(x, self.pruned_weight(), self.bias)
        # Local reparameterisation: sample the pre-activations, not the weights.
        mean = self._op(x, self.weight, self.bias)
        var = self._op(x * x, torch.exp(self.log_sigma2), None)
        return mean + torch.sqrt(var + _EPS) * torch.randn_like(mean)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class LinearSVDO(_SVDOMixin):
    """``nn.Linear`` with a Sparse-VD posterior: weight θ, per-weight ``log_sigma2`` and a bias.

    Training forward samples the output with the local reparameterisation trick
    (``mean = x θᵀ + b``, ``var = x² σ²ᵀ``); the eval forward is the deterministic, pruned layer that uses
    only the weights with ``log α < threshold``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self._init_svdo((out_features, in_features), bias, threshold, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Linear`` for θ and b; ``log_sigma2`` back to -10."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.constant_(self.log_sigma2, LOG_SIGMA2_INIT)

    @classmethod
    def from_linear(cls, layer: nn.Linear, threshold: float = DEFAULT_THRESHOLD) -> LinearSVDO:
        """An SVDO layer whose θ and bias are copies of ``layer``'s (same device and dtype)."""
        return cls._replacing(layer, threshold, layer.in_features, layer.out_features)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, threshold={self.threshold}"
        )


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv2dSVDO(_SVDOMixin):
    """``nn.Conv2d`` (zero padding) with a Sparse-VD posterior; see :class:`LinearSVDO`.

    The training forward convolves ``x`` with θ for the mean and ``x²`` with σ² for the variance.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels}, {out_channels}) must be divisible by groups={groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding: tuple[int, int] | str = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_svdo(shape, bias, threshold, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Conv2d`` for θ and b; ``log_sigma2`` back to -10."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.constant_(self.log_sigma2, LOG_SIGMA2_INIT)

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, threshold: float = DEFAULT_THRESHOLD) -> Conv2dSVDO:
        """An SVDO layer with ``layer``'s geometry, θ and bias (only ``padding_mode='zeros'``)."""
        if layer.padding_mode != "zeros":
            raise ValueError(f"Conv2dSVDO supports padding_mode='zeros' only, got {layer.padding_mode!r}")
        return cls._replacing(
            layer,
            threshold,
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
        )

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"bias={self.bias is not None}, threshold={self.threshold}"
        )


SVDOLayer = LinearSVDO | Conv2dSVDO


def svdo_layers(model: nn.Module) -> dict[str, SVDOLayer]:
    """``{dotted module name: layer}`` for every SVDO layer of ``model``, in module order."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, (LinearSVDO, Conv2dSVDO))}


def to_sparse_vd(model: nn.Module, *, threshold: float = DEFAULT_THRESHOLD) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.Linear`` / ``nn.Conv2d`` replaced by its SVDO version.

    The replacements sit under the same dotted module names (``fc1.weight`` stays ``fc1.weight``; each
    layer gains ``fc1.log_sigma2``) and start from the original θ and biases with ``log_sigma2 = -10``.
    Works for models that call their layers as submodules (the haloprune LeNets, ``nn.Sequential``...).
    The input model is untouched. Mask buffers of a pruned input are not carried over; its zero weights
    start at ``log α = 10`` (dropped by the eval network) but may grow back during training.
    """
    new = copy.deepcopy(unwrap(model))
    targets = [(n, m) for n, m in new.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
    if not targets and isinstance(new, (nn.Linear, nn.Conv2d)):
        return _convert(new, threshold)
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        setattr(parent, attr, _convert(module, threshold))
    return new


def _convert(module: nn.Module, threshold: float) -> SVDOLayer:
    if isinstance(module, nn.Conv2d):
        return Conv2dSVDO.from_conv(module, threshold)
    assert isinstance(module, nn.Linear)
    return LinearSVDO.from_linear(module, threshold)


def _require_layers(model: nn.Module) -> dict[str, SVDOLayer]:
    layers = svdo_layers(model)
    if not layers:
        raise ValueError("model has no SVDO layers; convert it with to_sparse_vd first")
    return layers


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Sum of :meth:`LinearSVDO.kl` over all SVDO layers (a differentiable scalar)."""
    layers = _require_layers(model)
    return torch.stack([layer.kl() for layer in layers.values()]).sum()


def log_alpha(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{weight parameter name: log α}`` (detached copies; e.g. ``"fc1.weight"``) for every SVDO layer."""
    prefix = lambda name: f"{name}." if name else ""  # noqa: E731
    return {f"{prefix(n)}weight": m.log_alpha.detach() for n, m in _require_layers(model).items()}


def elbo_loss(
    logits: torch.Tensor, targets: torch.Tensor, model: nn.Module, n_train: int, kl_weight: float
) -> torch.Tensor:
    """The SGVB objective per training point: ``cross_entropy(mean over batch) + kl_weight · KL / n_train``.

    ``n_train`` is the size of the training set (not of the batch). Start ``kl_weight`` at 0 and ramp it
    linearly to 1 over the first few epochs (see :func:`linear_kl_warmup`), as the authors do: with the
    full KL from the start the noise swamps the still-random network and training collapses to a very
    sparse, poor model. After the warm-up keep ``kl_weight = 1`` (the true variational bound).
    """
    if n_train <= 0:
        raise ValueError(f"n_train must be positive, got {n_train}")
    ce = F.cross_entropy(logits, targets)
    if kl_weight == 0:
        return ce
    return ce + kl_weight * kl_divergence(model) / n_train


def linear_kl_warmup(step: float, warmup_steps: float) -> float:
    """KL weight ``min(1, step / warmup_steps)`` (0 at step 0; count steps or epochs, as you like).

    >>> [linear_kl_warmup(epoch, 5) for epoch in range(7)]
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    """
    if warmup_steps <= 0:
        return 1.0
    return float(min(1.0, max(0.0, step / warmup_steps)))


@torch.no_grad()
def to_pruned_dense(
    svd_model: nn.Module, reference_model: nn.Module, threshold: float = DEFAULT_THRESHOLD
) -> nn.Module:
    """A plain model (deep copy of ``reference_model``) holding the SVDO means with the dropped weights zero.

    Every SVDO layer's θ goes into the reference's layer of the same name with the weights whose
    ``log α >= threshold`` set to exactly 0, and a haloprune mask (``<param>_mask``, True = kept) is
    attached to it. Biases and every other parameter / buffer (e.g. BatchNorm statistics) are copied
    from ``svd_model``. In eval mode the result computes the same function as ``svd_model.eval()`` when
    the thresholds agree. ``reference_model`` is only copied, never modified.
    """
    layers = _require_layers(svd_model)
    dense = copy.deepcopy(unwrap(reference_model))
    _masks.remove_masks(dense)
    state = {k: v for k, v in unwrap(svd_model).state_dict().items() if not k.endswith(".log_sigma2")}
    state = {k: v for k, v in state.items() if k != "log_sigma2"}
    _masks.load_state_dict(dense, state, strict=True, restore=False)
    for name, layer in layers.items():
        target = dense.get_submodule(name) if name else dense
        expected = nn.Conv2d if isinstance(layer, Conv2dSVDO) else nn.Linear
        if not isinstance(target, expected):
            raise TypeError(
                f"reference layer {name!r} is {type(target).__name__}, expected {expected.__name__}"
            )
        pname = f"{name}.weight" if name else "weight"
        _masks.attach_mask(dense, pname, layer.keep_mask(threshold))
    return dense


@torch.no_grad()
def sparsity(svd_model: nn.Module, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Fraction of all SVDO weights with ``log α >= threshold`` (dropped by the eval network)."""
    layers = _require_layers(svd_model)
    dropped = sum(int((~m.keep_mask(threshold)).sum()) for m in layers.values())
    total = sum(m.weight.numel() for m in layers.values())
    return dropped / total
