"""HALO where users already train, each behind an optional extra (the core does not import them):

* :mod:`haloprune.integrations.lightning` — ``HALOCallback`` for PyTorch Lightning (``haloprune[lightning]``);
* :mod:`haloprune.integrations.transformers` — ``HALOTrainerCallback`` for the Hugging Face ``Trainer``
  (``haloprune[hf]``).

What they share — building HALO on the model, attaching it to the optimizer with the run's step budget,
its statistics, its state in the framework's checkpoints, pruning at the end — is
:class:`~haloprune.integrations.session.HALOSession`; each module only maps its framework's hooks onto it.
"""
