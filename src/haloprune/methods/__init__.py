"""Ways of getting a sparse network, by kind: ``METHODS["gmp"](**params).run(ctx, sparsities)``.

Kinds: ``penalty`` (train with a penalty — none, L1, HALO, … — then prune once at every sparsity, no
fine-tuning), ``target`` (a penalty told its target sparsity: HALO's target mode, one run per
target), ``finetune`` (one-shot magnitude pruning of a dense network, then fine-tuning; Han et al.
2015), ``gmp`` (gradual magnitude pruning, cubic schedule; Zhu & Gupta 2017), ``imp`` (lottery-ticket
iterative magnitude pruning with rewinding; Frankle et al. 2019), ``snip`` (Lee et al. 2019) and
``random`` (pruning at initialisation), ``sparsevd`` (sparse variational dropout; Molchanov et al. 2017).
"""

from __future__ import annotations

from haloprune.core.registry import Registry
from haloprune.methods.at_init import RandomPruning, Snip
from haloprune.methods.base import Context, Method, Outcome, Params
from haloprune.methods.magnitude import GradualMagnitude, LotteryTicket, MagnitudeFineTune
from haloprune.methods.penalty import PenaltyMethod, TargetPenaltyMethod
from haloprune.methods.variational import SparseVD

#: Adding a method is one :class:`~haloprune.methods.base.Method` subclass and one line here.
METHODS: Registry[Method] = Registry(
    "method",
    {
        "penalty": PenaltyMethod,
        "target": TargetPenaltyMethod,
        "finetune": MagnitudeFineTune,
        "gmp": GradualMagnitude,
        "imp": LotteryTicket,
        "snip": Snip,
        "random": RandomPruning,
        "sparsevd": SparseVD,
    },
)

__all__ = ["METHODS", "Context", "Method", "Outcome", "Params"]
