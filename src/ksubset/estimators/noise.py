"""Perturbation noise for perturb-and-MAP estimators, drawn from an optional ``torch.Generator``.

* :func:`gumbel_noise` — standard Gumbel(0, 1).
* :func:`sum_of_gamma_noise` — the sum-of-gamma noise of Niepert et al. (2021):

      eps = (tau / kappa) * (sum_{i=1}^{s} Gamma(shape=1/kappa, scale=kappa/i) - log s).

  A sum of ``kappa`` independent copies equals ``tau * (sum_{i<=s} E_i / i - log s)`` with ``E_i ~ Exp(1)``,
  which tends to ``tau * Gumbel(0, 1)`` as ``s → ∞``; at finite ``s`` its mean is ``tau (H_s - log s)``
  (``H_s`` the harmonic number; Euler's gamma in the limit) and its variance ``tau² sum_{i<=s} 1/i²``
  (``π²/6`` in the limit). With ``kappa = k``, the perturbed top-k's k selected items together receive
  Gumbel-like noise.

``torch.distributions.Gamma`` cannot take a generator, so gamma variates are drawn here by the
Marsaglia–Tsang method from generator-driven normals and uniforms (vectorised rejection; for shape < 1 the
boost ``Gamma(a) = Gamma(a + 1) · U^{1/a}``, in log space).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["gumbel_noise", "standard_gamma", "sum_of_gamma_noise"]

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


def sum_of_gamma_noise(
    shape: _Shape,
    kappa: float | Tensor,
    *,
    s: int = 10,
    tau: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sum-of-gamma noise ``(tau/kappa)(sum_{i=1}^s Gamma(1/kappa, kappa/i) - log s)`` of the given shape.

    ``kappa`` is a positive number or a tensor broadcastable to ``shape`` (e.g. ``[..., 1]`` for one kappa
    per row). ``s`` is the number of gamma terms (10 in Niepert et al.), ``tau`` the temperature.
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
    return (tau / kap) * (total - math.log(s))
