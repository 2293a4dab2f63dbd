"""Shared plumbing for the estimators: the canonical batched problem, hyper-parameter checks, and an
autograd Function whose backward pass is any closure of the incoming gradient.

Only the public functions of :mod:`ksubset.core` are used here (layering: core ← estimators).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import core

__all__ = ["Canonical", "canonical", "custom_backward", "check", "perturb", "poison_rows"]


@dataclass
class Canonical:
    """A validated call flattened to ``[B, n]``.

    ``theta`` keeps the autograd link to the caller's logits on the *free* items (finite, available) and is
    ``-inf`` elsewhere; ``forced`` items (``+inf`` logits) are always selected; ``k_free = k - #forced``.
    """

    theta: Tensor
    free: Tensor
    forced: Tensor
    k_full: Tensor
    k_free: Tensor
    batch_shape: torch.Size
    dtype: torch.dtype

    @property
    def n(self) -> int:
        return self.theta.shape[-1]

    def unflatten(self, x: Tensor) -> Tensor:
        return x.reshape(*self.batch_shape, self.n).to(self.dtype)


def canonical(logits: Tensor, k: int | Tensor, mask: Tensor | None = None) -> Canonical:
    """Validate ``(logits, k, mask)`` with the core's checks and reduce it to the free-item problem."""
    P = core.prepare(logits, k, mask)
    k_full = P.k + P.forced.sum(-1)
    return Canonical(P.theta, P.free, P.forced, k_full, P.k, P.batch_shape, P.dtype)


class _CustomBackward(torch.autograd.Function):
    """Forward: ``value`` (bit-exact). Backward: ``backward_fn(g)`` as the gradient of ``logits``."""

    @staticmethod
    def forward(ctx, logits: Tensor, value: Tensor, backward_fn: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.backward_fn = backward_fn
        ctx.logits_meta = (logits.shape, logits.dtype)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        # The closure stays on ctx (freed with the graph node): a second backward(retain_graph=True) needs it.
        grad = ctx.backward_fn(g)
        shape, dtype = ctx.logits_meta
        return grad.reshape(shape).to(dtype), None, None


def custom_backward(logits: Tensor, value: Tensor, backward_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``value`` forward; the gradient with respect to ``logits`` is ``backward_fn(dL/dvalue)``.

    ``backward_fn`` receives the incoming gradient (shape of ``value``) and must return a tensor of the
    logits' shape. It may be called more than once (``backward(retain_graph=True)`` twice); the tensors it
    holds live as long as the output does. Not twice differentiable.
    """
    return _CustomBackward.apply(logits, value.detach(), backward_fn)


def perturb(theta: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
    """``theta + step`` on the finite items, and the rows ``[...]`` where that is not a usable problem.

    ``theta [..., n]`` and ``step`` (broadcastable) in the compute dtype. A row is *overflowed* when the incoming
    gradient behind ``step`` was not finite anywhere in the row (a loss scaler's inf/NaN) or a finite logit
    became ``±inf``/NaN: those rows get ``theta`` itself (a valid problem, so no input validation fires) and the
    caller marks their gradient non-finite with :func:`poison_rows`. Items with ``±inf`` logits (masked/forced)
    are not moved.
    """
    finite = torch.isfinite(theta)
    moved = torch.where(finite, theta + step, theta)
    bad = (~torch.isfinite(step) | (finite & ~torch.isfinite(moved))).any(-1)
    return torch.where(bad.unsqueeze(-1), theta, moved), bad


def poison_rows(grad: Tensor, bad: Tensor) -> Tensor:
    """``grad [..., n]`` with the rows where ``bad [...]`` is True set to NaN.

    Under mixed precision a ``torch.amp.GradScaler`` finds the NaN and skips the step (instead of the estimator
    raising on an overflowed perturbation).
    """
    return torch.where(bad.unsqueeze(-1), torch.full((), float("nan"), dtype=grad.dtype, device=grad.device), grad)


# --------------------------------------------------------------------------------------------------
# hyper-parameter checks: ValueError/TypeError naming the estimator and the hyper-parameter


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


class check:
    """Namespace of hyper-parameter validators (each returns the value, normalised)."""

    @staticmethod
    def positive(est: str, name: str, value: object) -> float:
        if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0:
            raise ValueError(f"{est}: {name} must be a positive finite number, got {value!r}")
        return float(value)

    @staticmethod
    def nonnegative(est: str, name: str, value: object) -> float:
        if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0:
            raise ValueError(f"{est}: {name} must be a finite number >= 0, got {value!r}")
        return float(value)

    @staticmethod
    def unit_interval(est: str, name: str, value: object) -> float:
        """In ``[0, 1)``."""
        if not _is_real(value) or not (0 <= float(value) < 1):
            raise ValueError(f"{est}: {name} must be a number in [0, 1), got {value!r}")
        return float(value)

    @staticmethod
    def integer(est: str, name: str, value: object, minimum: int) -> int:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < minimum:
            raise ValueError(f"{est}: {name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    @staticmethod
    def boolean(est: str, name: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{est}: {name} must be True or False, got {value!r}")
        return value

    @staticmethod
    def choice(est: str, name: str, value: object, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise ValueError(f"{est}: {name} must be one of {list(choices)}, got {value!r}")
        return value  # type: ignore[return-value]
