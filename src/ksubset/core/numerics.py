"""Numerics shared by every engine (each engine imports them from here, never from another engine).

* :func:`tilt` — the per-row shift ``c`` with ``sum_i sigmoid(theta_i + c) ≈ k`` that conditions every
  engine's arithmetic (``p_theta = p_{theta + c}``, so any ``c`` is exact); :func:`tilt_parts` gives it as
  ``delta - ref`` and :func:`shifted` forms ``theta - ref`` so that large logits keep their differences;
* :func:`softplus` — ``log(1 + e^x)`` to full precision;
* :func:`pow2` — the padded leaf count of the tree engine (also the size of its sampler's uniform draw).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "TILT_ITERATIONS",
    "TILT_FIXED_ITERATIONS",
    "TILT_TOLERANCE",
    "tilt",
    "tilt_parts",
    "shifted",
    "softplus",
    "pow2",
    "rand",
]

#: Upper bound on the safeguarded Newton/bisection iterations of the tilt when the caller gives ``K``. The tilt
#: only conditions the arithmetic (any c is exact), so it stops once
#: ``|sum_i sigmoid(theta_i + c) - target| <= TILT_TOLERANCE``; the bound is reached only by brackets spanning
#: the whole float range (bisection on an asinh scale halves the bracket's logarithm).
TILT_ITERATIONS = 200
#: Iterations of the traceable tilt (no ``K``): a fixed count, no host synchronisation (each one is unrolled
#: into compiled graphs). Enough from the centred start: its callers only need ``theta + c`` small near the
#: boundary.
TILT_FIXED_ITERATIONS = 12
#: How far the expected count under the tilted Bernoullis may sit from its target. Within half an item of
#: ``k``, ``Pr(S = k)`` is at least about ``1 / (2 (m + 1))`` (a Poisson-binomial's mode is within one of its
#: mean), which is all the engines need.
TILT_TOLERANCE = 0.25


def shifted(theta: Tensor, ref: Tensor) -> Tensor:
    """``theta - ref`` per row on finite entries (``-inf`` elsewhere), clamped to ``±max/4`` of the dtype.

    ``theta [B, n]``, ``ref [B]``. The subtraction is exact for entries within a factor two of ``ref``
    (Sterbenz), so logits near the reference keep their differences however large they are. Only a spread
    beyond the float range can overflow; the clamp keeps such entries finite (they are then decided, with
    probability one up to far below the float resolution, and their ties change nothing).
    """
    big = torch.finfo(theta.dtype).max / 4
    y = (theta - ref.unsqueeze(-1)).clamp(-big, big)
    return torch.where(torch.isfinite(theta), y, -math.inf)


def _bisect(lo: Tensor, hi: Tensor) -> Tensor:
    """A point strictly inside ``(lo, hi)``: the midpoint on an asinh scale (logarithmic for wide brackets)."""
    mid = torch.sinh(0.5 * (torch.asinh(lo) + torch.asinh(hi)))
    inside = (mid > lo) & (mid < hi)
    return torch.where(inside, mid, 0.5 * lo + 0.5 * hi)


def tilt_parts(theta: Tensor, k: Tensor, K: int | None = None) -> tuple[Tensor, Tensor]:
    """The tilt as a reference logit and an offset: ``(ref [B], delta [B])``, ``c = delta - ref``.

    ``theta [B, n]`` (``-inf`` on items that cannot be chosen), ``k [B]`` with ``0 <= k <= m`` (``m`` the
    number of finite entries of the row). The tilted logits are ``x = shifted(theta, ref) + delta``, with
    ``sum_i sigmoid(x_i) ≈ clamp(k, 0.5, m - 0.5)``. ``K``: ``max(k)`` as a host int (the engines, which run
    outside traced graphs); then only the ``K + 1`` largest logits are ranked and the iterations stop as
    soon as every row is solved. Without it the function is traceable (``torch.compile``, AOT autograd): a
    full sort and :data:`TILT_FIXED_ITERATIONS` iterations, no data-dependent control flow.

    ``ref`` is the midpoint of the ``k``-th and ``(k+1)``-th largest logits (the max for ``k = 0``, the
    min for ``k = m``): the items that decide the distribution then get exact differences (see
    :func:`shifted`), and when the logits are far apart ``delta = 0`` already solves the tilt. Otherwise
    safeguarded Newton iterations run inside the bracket ``[lg - max y, lg - min y]`` (``lg`` the logit of
    ``target / m``; valid by construction: at its ends every term is ``<=`` resp. ``>=`` ``target / m``),
    bisecting on an asinh scale when Newton leaves it, so that any spread the dtype holds is resolved in a
    bounded number of steps. Computed under ``no_grad``.
    """
    with torch.no_grad():
        B, n = theta.shape
        finite = torch.isfinite(theta)
        m = finite.sum(-1)
        k = k.to(torch.int64)
        t = torch.where(finite, theta, -math.inf)
        if K is None:
            top = t.sort(dim=-1, descending=True).values
            iterations, stop_early = TILT_FIXED_ITERATIONS, False
        else:
            top = t.topk(min(K + 1, n), dim=-1).values  # descending
            iterations, stop_early = TILT_ITERATIONS, True
        ref = _reference_logit(top, k, m)
        empty = m == 0
        y = shifted(t, ref)

        md = m.to(theta.dtype)
        target = torch.minimum(torch.clamp(k.to(theta.dtype), min=0.5), (md - 0.5).clamp(min=0.5))
        lg = torch.where(empty, 0.0, torch.log(target) - torch.log((md - target).clamp(min=0.5)))
        ymax = torch.where(finite, y, -math.inf).amax(-1)
        ymin = torch.where(finite, y, math.inf).amin(-1)
        lo = torch.where(empty, -1.0, lg - ymax)
        hi = torch.where(empty, 1.0, lg - ymin)
        d = torch.where((lo < 0) & (hi > 0), 0.0, _bisect(lo, hi))
        d = torch.where(lo == hi, lo, d)
        for it in range(iterations):
            s = torch.sigmoid(y + d.unsqueeze(-1))
            f = s.sum(-1) - target
            done = (f.abs() <= TILT_TOLERANCE) | empty | (lo >= hi)
            if stop_early and it % 4 == 0 and bool(done.all()):
                break
            fp = (s * (1 - s)).sum(-1)
            lo = torch.where(f < 0, d, lo)
            hi = torch.where(f > 0, d, hi)
            newton = d - f / fp
            ok = (newton > lo) & (newton < hi)
            d = torch.where(done, d, torch.where(ok, newton, _bisect(lo, hi)))
        return ref, d


def _reference_logit(top: Tensor, k: Tensor, m: Tensor) -> Tensor:
    """The midpoint of the ``k``-th and ``(k+1)``-th largest logits ``[B]`` (the max for ``k = 0``, the min for
    ``k = m``, 0 for a row without finite logits), from ``top [B, >= K + 1]``, each row's logits descending."""
    last = top.shape[-1] - 1
    a = top.gather(-1, (k - 1).clamp(0, last).unsqueeze(-1)).squeeze(-1)  # k-th largest
    b = top.gather(-1, k.clamp(0, last).unsqueeze(-1)).squeeze(-1)  # (k+1)-th largest
    inner = (k >= 1) & (k < m)
    ref = torch.where(inner, 0.5 * a + 0.5 * b, torch.where(k == 0, top[:, 0], a))
    return torch.where(m == 0, 0.0, ref)


def centre(theta: Tensor, k: Tensor) -> Tensor:
    """A per-row shift ``c [B]`` that puts the logits that decide the distribution near 0: minus the
    midpoint of the ``k``-th and ``(k+1)``-th largest (see :func:`tilt_parts`), without the tilt's iterations.

    For products with ``Cov(z)`` (``Cov(z) 1 = 0``, so any ``c`` is exact) that only need ``theta + c`` of
    moderate size where ``mu (1 - mu)`` is not negligible. Traceable (a full sort), computed under ``no_grad``.
    """
    with torch.no_grad():
        finite = torch.isfinite(theta)
        t = torch.where(finite, theta, -math.inf)
        top = t.sort(dim=-1, descending=True).values
        return -_reference_logit(top, k.to(torch.int64), finite.sum(-1))


def tilt(theta: Tensor, k: Tensor) -> Tensor:
    """Per-row shift ``c [B]`` with ``sum_i sigmoid(theta_i + c) ≈ clamp(k, 0.5, m - 0.5)``.

    ``theta [B, n]`` (``-inf`` on items that cannot be chosen), ``k [B]``; ``m`` is the number of finite
    entries. ``c = delta - ref`` of :func:`tilt_parts` (traceable: no ``K``). ``theta + c`` is exact for the
    logits within a factor two of ``ref`` (the rounding of ``c`` itself is a common shift, harmless). Not
    differentiated (computed under ``no_grad``): callers use it only where the result does not depend on ``c``.
    """
    ref, delta = tilt_parts(theta, k)
    return delta - ref


def softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)`` to full precision (``F.softplus`` returns ``x`` above 20, off by ``e^-20``)."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def rand(shape: tuple, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``torch.rand(shape)`` from ``generator`` (None: the global generator).

    ``generator=None`` is not passed on: ``torch.rand``'s generator overload does not take the symbolic sizes
    of ``torch.compile`` with dynamic shapes.
    """
    if generator is None:
        return torch.rand(shape, device=device, dtype=dtype)
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, (n - 1).bit_length())
