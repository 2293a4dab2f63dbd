"""ksubset: exact k-subset sampling, inference and the SIMPLE gradient estimator for PyTorch.

The public API (see the README's table):

* exact inference — :func:`log_partition`, :func:`marginals`, :func:`sample`, :func:`log_prob`,
  :func:`entropy`, :func:`kl_divergence`, :func:`kl_uniform`, :func:`mode`;
* :func:`simple` — the SIMPLE gradient estimator;
* :class:`KSubset` — the distribution as a ``torch.distributions.Distribution``;
* :mod:`ksubset.estimators` — SIMPLE and the baseline estimators by name; :mod:`ksubset.nn` — the layer;
* beyond exactly k: count constraints :class:`AtMost`, :class:`Between`, :class:`Exactly`,
  :class:`CountPotential` accepted wherever ``k`` is (:mod:`ksubset.cardinality`), :func:`count_distribution`,
  :class:`CardinalitySubset`; the inverse map :func:`logits_from_marginals` and :func:`sample_from_marginals`.
"""

from . import core as _core
from . import estimators, nn
from ._counts_dispatch import accepts_counts as _accepts_counts
from ._version import __version__
from .cardinality_distribution import CardinalitySubset
from .core import cardinality, kl_uniform
from .core.cardinality import AtMost, Between, CountPotential, Exactly, count_distribution
from .core.inverse import logits_from_marginals, sample_from_marginals
from .distribution import KSubset
from .estimators import cardinality as _card_estimators
from .estimators import simple as _simple

# exactly-k functions that also take a count constraint in place of k (one isinstance check per call)
entropy = _accepts_counts(_core.entropy, cardinality.entropy)
kl_divergence = _accepts_counts(_core.kl_divergence, cardinality.kl_divergence, position=2)
log_partition = _accepts_counts(_core.log_partition, cardinality.log_partition)
log_prob = _accepts_counts(_core.log_prob, cardinality.log_prob)
marginals = _accepts_counts(_core.marginals, cardinality.marginals)
mode = _accepts_counts(_core.mode, cardinality.mode)
sample = _accepts_counts(_core.sample, cardinality.sample)
simple = _accepts_counts(_simple, _card_estimators.simple)

__all__ = [
    "AtMost",
    "Between",
    "CardinalitySubset",
    "CountPotential",
    "Exactly",
    "KSubset",
    "cardinality",
    "count_distribution",
    "logits_from_marginals",
    "sample_from_marginals",
    "estimators",
    "nn",
    "__version__",
    "entropy",
    "kl_divergence",
    "kl_uniform",
    "log_partition",
    "log_prob",
    "marginals",
    "mode",
    "sample",
    "simple",
]
