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
``gumbel_softmax``        ``softmax((theta + G)/tau)``, k = 1     through the relaxation
``st_gumbel_softmax``     one-hot ``argmax(theta + G)``, k = 1    gradient of ``gumbel_softmax``
``relaxed_topk``          SoftSub relaxed top-k, temperature t    through the relaxation
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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core._problem import check_generator
from ..core.cardinality import CountConstraint
from .cardinality import SUPPORTED as _COUNT_ESTIMATORS
from .exact import MAX_ENUMERATION_N, exact_expectation, exact_gradient
from .finite_difference import _check_simple_fd, simple_fd
from .gumbel import _check_gumbel, gumbel_softmax, st_gumbel_softmax
from .imle import AIMLEState, _check_aimle, _check_imle, aimle, imle
from .noise import gumbel_noise, standard_gamma, sum_of_gamma_noise
from .relaxed_topk import _check_relaxed, relaxed_topk, st_relaxed_topk
from .score_function import _check_score_function, score_function
from .simple import simple, straight_through
from .simple_variants import _check_simple_b, _check_simple_f, simple_b, simple_f
from .ste import ste

__all__ = [
    "AIMLEState",
    "Estimator",
    "MAX_ENUMERATION_N",
    "aimle",
    "available",
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


@dataclass(frozen=True)
class _Spec:
    fn: Callable[..., Any]
    check: Callable[..., None] | None
    pathwise: bool = True


def _no_hyperparameters(**_: Any) -> None:
    return None


_REGISTRY: dict[str, _Spec] = {
    "simple": _Spec(simple, _no_hyperparameters),
    "simple_f": _Spec(simple_f, _check_simple_f),
    "simple_b": _Spec(simple_b, _check_simple_b),
    "simple_fd": _Spec(simple_fd, _check_simple_fd),
    "ste": _Spec(ste, _no_hyperparameters),
    "gumbel_softmax": _Spec(gumbel_softmax, lambda **hp: _check_gumbel("gumbel_softmax", **hp)),
    "st_gumbel_softmax": _Spec(st_gumbel_softmax, lambda **hp: _check_gumbel("st_gumbel_softmax", **hp)),
    "relaxed_topk": _Spec(relaxed_topk, lambda **hp: _check_relaxed("relaxed_topk", **hp)),
    "st_relaxed_topk": _Spec(st_relaxed_topk, lambda **hp: _check_relaxed("st_relaxed_topk", **hp)),
    "imle": _Spec(imle, _check_imle),
    "aimle": _Spec(aimle, _check_aimle),
    "score_function": _Spec(score_function, _check_score_function, pathwise=False),
}

# keyword-only parameters that are not hyper-parameters
_RUNTIME = {"generator", "state"}


def available() -> list[str]:
    """The registered estimator names."""
    return list(_REGISTRY)


def _spec(name: object) -> _Spec:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; available: {available()}")
    return _REGISTRY[name]


def _defaults(name: str) -> dict[str, Any]:
    sig = inspect.signature(_spec(name).fn)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _RUNTIME
    }


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyper-parameters of estimator ``name`` with their defaults."""
    return _defaults(name)


class Estimator:
    """An estimator with its hyper-parameters bound (made by :func:`get`).

    Pathwise: ``est(logits, k, mask=None, *, generator=None) -> Tensor[..., n]``.
    ``"score_function"``: ``est(logits, k, f, mask=None, *, generator=None) -> surrogate[...]``.
    ``"aimle"`` keeps its adaptive state in ``est.state`` (an :class:`AIMLEState`), shared across calls.

    Attributes: ``name``, ``hyperparameters`` (every hyper-parameter, defaults filled in), ``pathwise``.
    """

    def __init__(self, name: str, **hyperparameters: Any) -> None:
        spec = _spec(name)
        defaults = _defaults(name)
        unknown = sorted(set(hyperparameters) - set(defaults))
        if unknown:
            valid = list(defaults) or "none"
            raise ValueError(
                f"estimator {name!r} has no hyper-parameter(s) {unknown}; valid hyper-parameters: {valid}"
            )
        bound = {**defaults, **hyperparameters}
        if spec.check is not None:
            spec.check(**bound)
        self.name = name
        self.hyperparameters: dict[str, Any] = bound
        self.pathwise = spec.pathwise
        self._fn = spec.fn
        self.state: AIMLEState | None = AIMLEState(beta=float(bound["lam"])) if name == "aimle" else None

    def __call__(self, *args: Any, generator=None, **kwargs: Any):
        allowed = {"mask"} if self.pathwise else {"mask", "f"}
        if set(kwargs) - allowed:
            raise TypeError(
                f"estimator {self.name!r} takes (logits, k{'' if self.pathwise else ', f'}, mask=None, *, "
                f"generator=None); hyper-parameters are bound by get(), got {sorted(kwargs)}"
            )
        check_generator(generator)
        extra = {"state": self.state} if self.state is not None else {}
        if len(args) > 1 and isinstance(args[1], CountConstraint):  # k is a count constraint (AtMost, ...)
            if self.name not in _COUNT_ESTIMATORS:
                raise ValueError(f"estimator {self.name!r} has no count-constraint version; use one of "
                                 f"{sorted(_COUNT_ESTIMATORS)} with AtMost/Between/CountPotential")
            return _COUNT_ESTIMATORS[self.name](*args, generator=generator, **kwargs, **self.hyperparameters)
        return self._fn(*args, generator=generator, **kwargs, **self.hyperparameters, **extra)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"Estimator({self.name!r}{', ' if hp else ''}{hp})"


def get(name: str, **hyperparameters: Any) -> Estimator:
    """The estimator ``name`` with ``hyperparameters`` bound (the others take their defaults).

    Raises ``ValueError`` naming the valid estimators for an unknown ``name``, and the valid
    hyper-parameters of ``name`` for an unknown hyper-parameter; invalid values raise the estimator's
    own ``ValueError``/``TypeError``.
    """
    return Estimator(name, **hyperparameters)
