"""Count-constrained subsets: ``p(z) ∝ exp(theta · z + phi[|z|])`` — at most k, between a and b, learned
count priors — with the same exact inference as the k-subset core (see :mod:`.inference`).

Count constraints (:mod:`.constraints`) go where ``k`` goes: ``marginals(logits, AtMost(5))``; a plain int is
``Exactly(k)``.
"""

from .constraints import AtMost, Between, CountConstraint, CountPotential, Exactly, as_constraint
from .inference import (
    count_distribution,
    entropy,
    kl_divergence,
    log_partition,
    log_prob,
    marginals,
    mode,
    sample,
    sample_and_marginals,
)

__all__ = [
    "AtMost",
    "Between",
    "CountConstraint",
    "CountPotential",
    "Exactly",
    "as_constraint",
    "count_distribution",
    "entropy",
    "kl_divergence",
    "log_partition",
    "log_prob",
    "marginals",
    "mode",
    "sample",
    "sample_and_marginals",
]
