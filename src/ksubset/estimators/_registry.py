"""The estimator registry: each estimator module registers itself with :func:`register` when imported.

A registration is the function, its hyper-parameter check, whether it is pathwise, and optionally a factory
for state kept across calls (AIMLE's adaptive beta) and a count-constraint version (:func:`register_counts`).
Hyper-parameters are the function's keyword-only parameters other than ``generator`` and ``state``; names a
function has renamed (:func:`._common.renamed`) are accepted by :func:`get` with a ``DeprecationWarning``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.cardinality import CountConstraint
from ._common import check_generator, translate_renamed

__all__ = ["Estimator", "available", "get", "hyperparameters", "register", "register_counts", "validate"]


@dataclass
class _Spec:
    fn: Callable[..., Any]
    check: Callable[..., None] | None
    pathwise: bool
    state: Callable[[dict[str, Any]], Any] | None
    counts: Callable[..., Any] | None = None


_REGISTRY: dict[str, _Spec] = {}

# keyword-only parameters that are not hyper-parameters
_RUNTIME = {"generator", "state"}


def register(
    name: str,
    fn: Callable[..., Any],
    check: Callable[..., None] | None = None,
    *,
    pathwise: bool = True,
    state: Callable[[dict[str, Any]], Any] | None = None,
) -> None:
    """Register estimator ``name``.

    Args:
        fn: ``fn(logits, k, mask=None, *, generator=None, **hyperparameters)`` (pathwise) or
            ``fn(logits, k, f, mask=None, *, generator=None, **hyperparameters)`` (``pathwise=False``).
        check: ``check(**hyperparameters)`` raising ``ValueError``/``TypeError`` on bad values (None: nothing
            to check).
        state: ``state(hyperparameters)`` makes the object an :class:`Estimator` keeps across calls and passes
            as ``fn(..., state=...)``.
    """
    if name in _REGISTRY:
        raise ValueError(f"estimator {name!r} is already registered")
    _REGISTRY[name] = _Spec(fn, check, pathwise, state)


def register_counts(name: str, fn: Callable[..., Any]) -> None:
    """Register the count-constraint version of the registered estimator ``name`` (same hyper-parameters)."""
    _spec(name).counts = fn


def available() -> list[str]:
    """The registered estimator names."""
    return list(_REGISTRY)


def _spec(name: object) -> _Spec:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; available: {available()}")
    return _REGISTRY[name]


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyper-parameters of estimator ``name`` with their defaults."""
    sig = inspect.signature(_spec(name).fn)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _RUNTIME
    }


def _bind(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter of ``name`` (defaults filled in), deprecated names translated, values checked."""
    spec = _spec(name)
    given = translate_renamed(name, given, getattr(spec.fn, "deprecated_names", {}))
    defaults = hyperparameters(name)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = list(defaults) or "none"
        raise ValueError(f"estimator {name!r} has no hyper-parameter(s) {unknown}; valid hyper-parameters: {valid}")
    bound = {**defaults, **given}
    if spec.check is not None:
        spec.check(**bound)
    return bound


def validate(name: str, **hyperparameters: Any) -> None:
    """Check hyper-parameter values with estimator ``name``'s own check (for versions that share them)."""
    check = _spec(name).check
    if check is not None:
        check(**hyperparameters)


class Estimator:
    """An estimator with its hyper-parameters bound (made by :func:`get`).

    Pathwise: ``est(logits, k, mask=None, *, generator=None) -> Tensor[..., n]``.
    ``"score_function"``: ``est(logits, k, f, mask=None, *, generator=None) -> surrogate[...]``.
    ``"aimle"`` keeps its adaptive state in ``est.state`` (an :class:`AIMLEState`), shared across calls.

    Attributes: ``name``, ``hyperparameters`` (every hyper-parameter, defaults filled in), ``pathwise``,
    ``state`` (None for estimators without state).
    """

    def __init__(self, name: str, **hyperparameters: Any) -> None:
        spec = _spec(name)
        bound = _bind(name, hyperparameters)
        self.name = name
        self.hyperparameters: dict[str, Any] = bound
        self.pathwise = spec.pathwise
        self._spec = spec
        self.state = spec.state(bound) if spec.state is not None else None

    def __call__(self, *args: Any, generator=None, **kwargs: Any):
        allowed = {"mask"} if self.pathwise else {"mask", "f"}
        if set(kwargs) - allowed:
            raise TypeError(
                f"estimator {self.name!r} takes (logits, k{'' if self.pathwise else ', f'}, mask=None, *, "
                f"generator=None); hyper-parameters are bound by get(), got {sorted(kwargs)}"
            )
        check_generator(generator)
        if len(args) > 1 and isinstance(args[1], CountConstraint):  # k is a count constraint (AtMost, ...)
            if self._spec.counts is None:
                with_counts = sorted(n for n, s in _REGISTRY.items() if s.counts is not None)
                raise ValueError(f"estimator {self.name!r} has no count-constraint version; use one of "
                                 f"{with_counts} with AtMost/Between/CountPotential")
            return self._spec.counts(*args, generator=generator, **kwargs, **self.hyperparameters)
        extra = {"state": self.state} if self.state is not None else {}
        return self._spec.fn(*args, generator=generator, **kwargs, **self.hyperparameters, **extra)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"Estimator({self.name!r}{', ' if hp else ''}{hp})"


def get(name: str, **hyperparameters: Any) -> Estimator:
    """The estimator ``name`` with ``hyperparameters`` bound (the others take their defaults).

    Raises ``ValueError`` naming the valid estimators for an unknown ``name``, and the valid
    hyper-parameters of ``name`` for an unknown hyper-parameter; invalid values raise the estimator's
    own ``ValueError``/``TypeError``. A renamed hyper-parameter's old name is accepted with a
    ``DeprecationWarning`` naming the new one.
    """
    return Estimator(name, **hyperparameters)
