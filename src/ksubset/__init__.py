"""ksubset: exact k-subset sampling, inference and the SIMPLE gradient estimator for PyTorch.

The public API (see the README's table):

* exact inference — :func:`log_partition`, :func:`marginals`, :func:`sample`, :func:`log_prob`,
  :func:`entropy`, :func:`kl_divergence`, :func:`kl_uniform`, :func:`mode`;
* :func:`simple` — the SIMPLE gradient estimator;
* :class:`KSubset` — the distribution as a ``torch.distributions.Distribution``;
* :mod:`ksubset.estimators` — SIMPLE and the baseline estimators by name; :mod:`ksubset.nn` — the layer.
"""

from . import estimators, nn
from ._version import __version__
from .core import entropy, kl_divergence, kl_uniform, log_partition, log_prob, marginals, mode, sample
from .distribution import KSubset
from .estimators.simple import simple

__all__ = [
    "KSubset",
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
