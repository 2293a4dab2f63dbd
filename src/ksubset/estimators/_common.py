"""Shared plumbing of the estimators: the validated problem, gradient plumbing, perturbation noise, the
relaxed top-k recursion, the score-function surrogate, hyper-parameter checks and renamed hyper-parameters.

Every estimator module takes what it shares with another one from here (never another module's private
names). Only :mod:`ksubset.core`'s public functions are used, and its ``check_generator`` (layering: core ←
estimators).

**The problem.** Estimators validate ``(logits, k, mask)`` with :func:`ksubset.core.prepare`, which returns a
:class:`ksubset.core.Problem` flattened to ``[B, n]``. Its field ``k`` is the number of *free* items each row
selects — the caller's ``k`` minus the row's forced (``+inf``) items — so it is read here only through
:func:`k_free`, and the caller's full ``k`` through :func:`k_total`.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import core
from ..core._problem import check_generator  # not exported by ksubset.core; used by the registry and SIMPLE

__all__ = [
    "BASELINES",
    "NOISES",
    "check",
    "check_generator",
    "check_noise",
    "custom_backward",
    "draw_noise",
    "draw_topk_noise",
    "evaluate_loss",
    "k_free",
    "k_total",
    "perturb",
    "gumbel_noise",
    "perturbed_keys",
    "poison_rows",
    "renamed",
    "score_surrogate",
    "soft_topk",
    "standard_gamma",
    "straight_through",
    "sum_of_gamma_noise",
    "to_caller",
    "translate_renamed",
]

# --------------------------------------------------------------------------------------------------
# renamed hyper-parameters: the old names are accepted for one release, with a DeprecationWarning

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LAYER_FILE = os.path.join(os.path.dirname(_PACKAGE_DIR), "nn.py")


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this package and ``ksubset.nn``."""
    level, frame = 1, sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(_PACKAGE_DIR + os.sep) or path == _LAYER_FILE):
            return level
        level, frame = level + 1, frame.f_back  # type: ignore[assignment]  # None ends the loop
    return level


def translate_renamed(owner: str, kwargs: dict[str, Any], old_to_new: dict[str, str]) -> dict[str, Any]:
    """``kwargs`` with every deprecated name replaced by its new one, warning once per old name used.

    Raises ``TypeError`` when both the old and the new name are given.
    """
    out = dict(kwargs)
    for old, new in old_to_new.items():
        if old not in out:
            continue
        if new in out:
            raise TypeError(f"{owner}: got both {old!r} (deprecated) and {new!r}; pass only {new!r}")
        warnings.warn(
            f"{owner}: the hyper-parameter {old!r} is deprecated and will be removed in the next release; "
            f"use {new!r} instead",
            DeprecationWarning,
            stacklevel=_user_stacklevel(),
        )
        out[new] = out.pop(old)
    return out


def renamed(**old_to_new: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the function also accepts each old keyword name (mapped to the new one, with a warning).

    The wrapper keeps the function's signature (``inspect.signature`` shows the new names only) and exposes the
    map as ``fn.deprecated_names`` (``{old: new}``), which the registry uses to accept the old names in ``get``.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            if not kwargs.keys().isdisjoint(old_to_new):
                kwargs = translate_renamed(fn.__name__, kwargs, old_to_new)
            return fn(*args, **kwargs)

        inner.deprecated_names = dict(old_to_new)  # type: ignore[attr-defined]
        return inner

    return wrap


# --------------------------------------------------------------------------------------------------
# the validated problem (ksubset.core.Problem)


def k_free(P: core.Problem) -> Tensor:
    """``[B]`` int64: how many *free* items each row selects (``k`` minus the row's forced items).

    This is ``Problem.k``: the core stores the reduced requirement of the free-item problem, not the caller's k.
    """
    return P.k


def k_total(P: core.Problem) -> Tensor:
    """``[B]`` int64: the caller's ``k`` per row (free plus forced items)."""
    return P.k + P.forced.sum(-1)


def to_caller(P: core.Problem, x: Tensor) -> Tensor:
    """``x [B, n]`` → ``[*batch, n]`` in the caller's dtype."""
    return x.reshape(*P.batch_shape, P.n).to(P.dtype)


# --------------------------------------------------------------------------------------------------
# gradient plumbing


class _StraightThrough(torch.autograd.Function):
    """Returns ``value`` exactly; sends the incoming gradient to ``surrogate`` unchanged.

    Unlike ``value + surrogate - surrogate.detach()``, the forward value is bit-exact (no rounding).
    """

    @staticmethod
    def forward(ctx, value: Tensor, surrogate: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        return None, g


def straight_through(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass, ``d surrogate`` in the backward pass (same shapes)."""
    return _StraightThrough.apply(value.detach(), surrogate)


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
# noise primitives (public: re-exported by ksubset.estimators)
#
# Perturbation noise for perturb-and-MAP estimators, drawn from an optional ``torch.Generator``.
#
# * :func:`gumbel_noise` — standard Gumbel(0, 1).
# * :func:`sum_of_gamma_noise` — the sum-of-gamma noise of Niepert et al. (2021):
#
#       eps = (scale / kappa) * (sum_{i=1}^{s} Gamma(shape=1/kappa, scale=kappa/i) - log s).
#
#   A sum of ``kappa`` independent copies equals ``scale * (sum_{i<=s} E_i / i - log s)`` with ``E_i ~ Exp(1)``,
#   which tends to ``scale * Gumbel(0, 1)`` as ``s → ∞``; at finite ``s`` its mean is ``scale (H_s - log s)``
#   (``H_s`` the harmonic number; Euler's gamma in the limit) and its variance ``scale² sum_{i<=s} 1/i²``
#   (``π²/6`` in the limit). With ``kappa = k``, the perturbed top-k's k selected items together receive
#   Gumbel-like noise.
#
# ``torch.distributions.Gamma`` cannot take a generator, so gamma variates are drawn here by the
# Marsaglia–Tsang method from generator-driven normals and uniforms (vectorised rejection; for shape < 1 the
# boost ``Gamma(a) = Gamma(a + 1) · U^{1/a}``, in log space).

_Shape = Sequence[int] | torch.Size


def gumbel_noise(
    shape: _Shape,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard Gumbel(0, 1) noise of the given shape: ``-log E``, ``E ~ Exp(1)``."""
    e = torch.empty(tuple(shape), dtype=dtype, device=device).exponential_(generator=generator)
    return -torch.log(e.clamp_min(torch.finfo(dtype).tiny))


def standard_gamma(concentration: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Gamma(shape=concentration, scale=1) variates, elementwise; same shape, dtype and device."""
    alpha = concentration
    if not alpha.is_floating_point():
        raise TypeError(f"concentration must be a floating-point tensor, got {alpha.dtype}")
    if alpha.numel() and not bool((alpha > 0).all()):
        raise ValueError("concentration must be > 0 everywhere")
    dt, dev = alpha.dtype, alpha.device
    boost = alpha < 1
    a = torch.where(boost, alpha + 1, alpha).reshape(-1)
    d = a - 1.0 / 3.0
    c = torch.rsqrt(9.0 * d)
    out = torch.empty_like(a)
    todo = torch.arange(a.numel(), device=dev)
    tiny = torch.finfo(dt).tiny
    while todo.numel() > 0:
        dd, cc = d[todo], c[todo]
        x = torch.randn(todo.numel(), dtype=dt, device=dev, generator=generator)
        u = torch.rand(todo.numel(), dtype=dt, device=dev, generator=generator)
        v = (1 + cc * x) ** 3
        ok = (v > 0) & (
            torch.log(u.clamp_min(tiny)) < 0.5 * x * x + dd - dd * v + dd * torch.log(v.clamp_min(tiny))
        )
        out[todo[ok]] = (dd * v)[ok]
        todo = todo[~ok]
    out = out.reshape(alpha.shape)
    u = torch.rand(alpha.shape, dtype=dt, device=dev, generator=generator)
    log_boost = torch.where(boost, torch.log(u.clamp_min(tiny)) / alpha, torch.zeros((), dtype=dt, device=dev))
    return torch.exp(torch.log(out) + log_boost)


@renamed(tau="scale")
def sum_of_gamma_noise(
    shape: _Shape,
    kappa: float | Tensor,
    *,
    s: int = 10,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sum-of-gamma noise ``(scale/kappa)(sum_{i=1}^s Gamma(1/kappa, kappa/i) - log s)`` of the given shape.

    ``kappa`` is a positive number or a tensor broadcastable to ``shape`` (e.g. ``[..., 1]`` for one kappa
    per row). ``s`` is the number of gamma terms (10 in Niepert et al.); ``scale`` multiplies the whole draw
    (Niepert et al.'s temperature tau; ``tau=`` is a deprecated alias).
    """
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ValueError(f"s must be an integer >= 1, got {s!r}")
    shape = torch.Size(shape)
    kap = torch.as_tensor(kappa, dtype=dtype, device=device)
    if kap.numel() and not bool((kap > 0).all() & torch.isfinite(kap).all()):
        raise ValueError(f"kappa must be positive and finite, got {kappa!r}")
    kap = kap.expand(shape)
    alpha = (1.0 / kap).expand(s, *shape)
    gam = standard_gamma(alpha.contiguous(), generator=generator)
    i = torch.arange(1, s + 1, dtype=dtype, device=device).reshape(s, *([1] * len(shape)))
    total = (gam / i).sum(0) * kap  # scale kappa / i
    return (scale / kap) * (total - math.log(s))


# --------------------------------------------------------------------------------------------------
# perturbation noise for perturb-and-MAP (I-MLE, AIMLE, SIMPLE-B and the count-constrained I-MLE)

NOISES = ("sum_of_gamma", "gumbel")


def draw_noise(
    shape: tuple[int, ...],
    *,
    noise: str,
    kappa: float | Tensor,
    s: int,
    noise_scale: float,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """``noise_scale`` times standard Gumbel, or sum-of-gamma noise with ``kappa`` (broadcastable to ``shape``)
    and ``s`` terms; one draw of ``shape`` from ``generator``."""
    if noise == "gumbel":
        return noise_scale * gumbel_noise(shape, dtype=dtype, device=device, generator=generator)
    return sum_of_gamma_noise(shape, kappa, s=s, scale=noise_scale, dtype=dtype, device=device, generator=generator)


def draw_topk_noise(
    P: core.Problem, num_samples: int, *, noise: str, kappa: float | None, s: int, noise_scale: float, generator
) -> Tensor:
    """Noise ``[num_samples, *batch, n]`` in the compute dtype; ``kappa=None`` is each row's k (at least 1)."""
    dt, dev = P.theta.dtype, P.theta.device
    # kappa = k per row by default (Niepert et al.'s choice for k-subsets)
    shape: float | Tensor = k_total(P).clamp_min(1).to(dt).reshape(*P.batch_shape, 1) if kappa is None else kappa
    return draw_noise((num_samples, *P.batch_shape, P.n), noise=noise, kappa=shape, s=s, noise_scale=noise_scale,
                      dtype=dt, device=dev, generator=generator)


# --------------------------------------------------------------------------------------------------
# the relaxed top-k recursion (SoftSub; Gumbel-softmax is its k = 1 case)


def perturbed_keys(P: core.Problem, generator: torch.Generator | None) -> Tensor:
    """Perturbed keys ``theta + G`` on the free items, ``-inf`` elsewhere, ``[B, n]`` (grad-linked)."""
    G = gumbel_noise(P.theta.shape, dtype=P.theta.dtype, device=P.theta.device, generator=generator)
    return P.theta + G


def soft_topk(P: core.Problem, keys: Tensor, temperature: float) -> Tensor:
    """``sum_j softmax(alpha^j / temperature)`` over each row's free steps, plus the forced items; ``[B, n]``.

    ``alpha^1 = keys``, ``alpha^{j+1} = alpha^j + log(1 - a^j)`` (Xie & Ermon's update), in the compute dtype.
    """
    dt, dev = keys.dtype, keys.device
    kf = k_free(P)
    zero = torch.zeros((), dtype=dt, device=dev)
    # Rows with no free item (k_free = 0 there) would give softmax(all -inf) = NaN: use zeros instead.
    alpha = torch.where(P.free.any(-1, keepdim=True), keys, zero)
    K = int(kf.max()) if kf.numel() else 0
    # Keep the output on the autograd graph even with no softmax step (k = 0 everywhere, or an empty batch):
    # its gradient is then zero (of the logits' shape) instead of an error in backward().
    out = P.forced.to(dt) + (torch.where(P.free, alpha, zero) * 0 if K == 0 else 0)
    for j in range(K):
        a = torch.softmax(alpha / temperature, dim=-1)
        out = out + torch.where((j < kf).unsqueeze(-1), a, zero)
        if j + 1 < K:
            rest = 1 - a
            pos = rest > 0
            log_rest = torch.where(pos, torch.log(torch.where(pos, rest, 1.0)), float("-inf"))
            # Update only rows with a step left: a row with all its free items chosen stays finite.
            alpha = torch.where((j + 1 < kf).unsqueeze(-1), alpha + log_rest, alpha)
    return out


# --------------------------------------------------------------------------------------------------
# the score-function surrogate (exactly-k and count-constrained)

BASELINES = ("none", "mean", "leave_one_out")


def evaluate_loss(f: Callable[[Tensor], Tensor], z: Tensor, expected: torch.Size) -> Tensor:
    """``f(z)``, checked to be a tensor of shape ``expected`` (one value per sample and row)."""
    out = f(z)
    if not isinstance(out, Tensor):
        raise TypeError(f"score_function: f must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != expected:
        raise ValueError(
            f"score_function: f must map z of shape {tuple(z.shape)} to shape {tuple(expected)} "
            f"(one value per sample and row), got {tuple(out.shape)}"
        )
    return out


def score_surrogate(
    f: Callable[[Tensor], Tensor],
    draw: Callable[[], Tensor],
    log_prob: Callable[[Tensor], Tensor],
    num_samples: int,
    baseline: str,
) -> Tensor:
    """Surrogate ``[...]`` with value ``mean_s f(z_s)`` and gradient ``mean_s (f(z_s) - b_s) d log p(z_s)``.

    ``draw()`` returns ``num_samples`` exact samples ``z [S, *batch, n]``; ``log_prob(z)`` their differentiable
    log-probabilities ``[S, *batch]``. Baselines as in :func:`ksubset.estimators.score_function`.
    """
    if not callable(f):
        raise TypeError(f"score_function: f must be callable, got {type(f).__name__}")
    S = num_samples
    z = draw()
    expected = z.shape[:-1]
    fz = evaluate_loss(f, z, expected)
    fd = fz.detach()
    if baseline == "none":
        adv = fd
    elif baseline == "leave_one_out":
        adv = fd - (fd.sum(0, keepdim=True) - fd) / (S - 1)
    else:
        adv = fd - evaluate_loss(f, draw(), expected).detach().mean(0, keepdim=True)
    logp = log_prob(z)
    score = logp - logp.detach()  # value 0, gradient d log p
    return fz.mean(0) + (adv.to(score.dtype) * score).mean(0).to(fz.dtype)


# --------------------------------------------------------------------------------------------------
# hyper-parameter checks: ValueError/TypeError naming the estimator and the hyper-parameter


def _is_real(x: object) -> TypeGuard[numbers.Real]:
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


def check_noise(est: str, *, noise, kappa, s, noise_scale) -> None:
    """The perturbation-noise hyper-parameters shared by I-MLE, AIMLE and SIMPLE-B."""
    check.choice(est, "noise", noise, NOISES)
    if kappa is not None:
        check.positive(est, "kappa", kappa)
    check.integer(est, "s", s, 1)
    check.positive(est, "noise_scale", noise_scale)
