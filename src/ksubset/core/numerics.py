"""Numerics shared by every engine (each engine imports them from here, never from another engine).

* :func:`tilt` — the per-row shift ``c`` with ``sum_i sigmoid(theta_i + c) ≈ k`` that conditions every
  engine's arithmetic (``p_theta = p_{theta + c}``, so any ``c`` is exact);
* :func:`softplus` — ``log(1 + e^x)`` to full precision;
* :func:`pow2` — the padded leaf count of the tree engine (also the size of its sampler's uniform draw).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["TILT_ITERATIONS", "tilt", "softplus", "pow2", "rand"]

#: Newton/bisection iterations for the tilt. The tilt only conditions the arithmetic (any c is exact),
#: so a rough solution is enough.
TILT_ITERATIONS = 12


def tilt(theta: Tensor, k: Tensor) -> Tensor:
    """Per-row shift ``c [B]`` with ``sum_i sigmoid(theta_i + c) ≈ clamp(k, 0.5, m - 0.5)``.

    ``theta [B, n]`` (``-inf`` on items that cannot be chosen), ``k [B]``. ``m`` is the number of finite
    entries. Safeguarded Newton iterations inside a bracket that is valid by construction: at
    ``c = logit(t/m) - max(theta)`` every term is ``<= t/m``, at ``logit(t/m) - min(theta)`` every term is
    ``>= t/m``. Not differentiated (computed under ``no_grad``): callers use it only where the result does
    not depend on ``c``.
    """
    with torch.no_grad():
        finite = torch.isfinite(theta)
        m = finite.sum(-1).to(theta.dtype)
        target = torch.minimum(torch.clamp(k.to(theta.dtype), min=0.5), (m - 0.5).clamp(min=0.5))
        frac = (target / m.clamp(min=1.0)).clamp(1e-6, 1 - 1e-6)
        lg = torch.log(frac) - torch.log1p(-frac)
        tmax = torch.where(finite, theta, -math.inf).amax(-1)
        tmin = torch.where(finite, theta, math.inf).amin(-1)
        empty = m == 0
        tmax = torch.where(empty, 0.0, tmax)
        tmin = torch.where(empty, 0.0, tmin)
        lo, hi = lg - tmax, lg - tmin
        c = 0.5 * (lo + hi)
        for _ in range(TILT_ITERATIONS):
            s = torch.sigmoid(theta + c.unsqueeze(-1))
            f = s.sum(-1) - target
            fp = (s * (1 - s)).sum(-1)
            lo = torch.where(f < 0, c, lo)
            hi = torch.where(f > 0, c, hi)
            newton = c - f / fp
            ok = (newton > lo) & (newton < hi)
            c = torch.where(ok, newton, 0.5 * (lo + hi))
        return c


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
