"""Gradient estimators for k-subset sampling, behind one calling convention, and a registry by name.

Pathwise estimators return the forward value ``[..., n]`` with the estimator's gradient attached::

    est(logits, k, mask=None, *, generator=None, **hyperparameters) -> Tensor[..., n]

========================  ======================================  ===========================================
name                      forward                                 backward
========================  ======================================  ===========================================
``simple``                exact k-subset sample                   ``Cov(z) g`` (exact marginal Jacobian)
``simple_f``              exact sample ``z``                      ``z - z'``, ``z' ~ p_{theta - lam g}``
``simple_b``              perturb-and-MAP (sum-of-gamma)          ``mu(theta) - mu(theta - lam g)``
``simple_fd``             exact k-subset sample                   ``mu(theta) - mu(theta - lam g)``
``ste``                   exact sample                            identity
``gumbel_softmax``        ``softmax((theta + G)/temperature)``,   through the relaxation
                          k = 1
``st_gumbel_softmax``     one-hot ``argmax(theta + G)``, k = 1    gradient of ``gumbel_softmax``
``relaxed_topk``          SoftSub relaxed top-k at temperature    through the relaxation
``st_relaxed_topk``       hard top-k of the same perturbed keys   gradient of ``relaxed_topk``
``imle``                  ``topk(theta + eps)``                   ``MAP(theta+eps) - MAP(theta-lam g+eps)``
``aimle``                 ``topk(theta + eps)``                   adaptive, relative, central differences
========================  ======================================  ===========================================

The score-function estimator needs the loss instead of ``g``: :func:`score_function` (logits, k, f, ...)
returns a surrogate whose gradient is the estimate. :func:`exact_gradient` is the enumeration oracle.

Registry: :func:`get` (``name, **hyperparameters``) returns an :class:`Estimator`, a callable with the
hyper-parameters bound — ``est(logits, k, mask=None, *, generator=None)`` for pathwise estimators and
``est(logits, k, f, mask=None, *, generator=None)`` for ``"score_function"``. Unknown names and
hyper-parameters are rejected with the list of valid ones; values are validated when bound.
:func:`available` lists the names.

Hyper-parameter names: ``temperature`` for a relaxation's temperature, ``noise_scale`` for the scale of
perturb-and-MAP noise (Niepert et al.'s tau), ``lam`` for a finite-difference perturbation size, ``initial_beta``
for AIMLE's starting relative perturbation. The old names (``t``, ``tau``, AIMLE's ``lam``) are accepted for one
release with a ``DeprecationWarning`` naming the new one.

Each estimator lives in a private module that registers it (:func:`._registry.register`); import the
functions from this package (``from ksubset.estimators import simple``). :mod:`.cardinality` holds the
count-constraint versions.
"""

from __future__ import annotations

# Importing the modules registers the estimators, in this order (the order of available()).
# isort: off
from . import _simple, _simple_variants, _finite_difference, _ste, _gumbel, _relaxed_topk, _imle  # noqa: F401
from . import _score_function, cardinality  # noqa: F401
# isort: on
from ._common import gumbel_noise, standard_gamma, straight_through, sum_of_gamma_noise
from ._exact import MAX_ENUMERATION_N, exact_expectation, exact_gradient
from ._finite_difference import simple_fd
from ._gumbel import gumbel_softmax, st_gumbel_softmax
from ._imle import AIMLEState, aimle, imle
from ._registry import Estimator, available, get, hyperparameters
from ._relaxed_topk import relaxed_topk, st_relaxed_topk
from ._score_function import score_function
from ._simple import simple
from ._simple_variants import simple_b, simple_f
from ._ste import ste

__all__ = [
    "AIMLEState",
    "Estimator",
    "MAX_ENUMERATION_N",
    "aimle",
    "available",
    "cardinality",
    "exact_expectation",
    "exact_gradient",
    "get",
    "gumbel_noise",
    "gumbel_softmax",
    "hyperparameters",
    "imle",
    "relaxed_topk",
    "score_function",
    "simple",
    "simple_b",
    "simple_f",
    "simple_fd",
    "standard_gamma",
    "st_gumbel_softmax",
    "st_relaxed_topk",
    "ste",
    "straight_through",
    "sum_of_gamma_noise",
]
