"""Validation and reduction of a count-constrained call to a canonical batched problem.

As for exactly-k (:mod:`ksubset.core._problem`), unavailable items (``mask == False`` or ``-inf`` logits)
are never selected and forced items (``+inf`` logits) are always selected and conditioned on: they add
nothing to ``theta · z`` or ``log Z``. A row with ``f`` forced items and total-count log-potentials ``phi``
becomes a problem on its free items with ``phi'[j] = phi[j + f]`` (``j`` = number of free items chosen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._problem import check_logits, check_mask, compute_dtype
from .constraints import as_constraint

__all__ = ["CountProblem", "prepare_counts", "tilt_to"]

#: Safeguarded Newton iterations of the tilt; the tilt only conditions the arithmetic (any value is exact).
TILT_ITERATIONS = 12


@dataclass
class CountProblem:
    """A validated, flattened count-constrained problem.

    Attributes:
        theta: ``[B, n]`` logits (compute dtype), finite on free items and ``-inf`` elsewhere; keeps the
            autograd link to the caller's logits on free items.
        phi: ``[B, K + 1]`` log-potentials of the number of *free* items chosen (``-inf`` = forbidden);
            keeps the autograd link to a ``CountPotential``.
        free, forced, available: ``[B, n]`` bool.
        n_forced, n_free: ``[B]`` int64.
        K_total: the width - 1 of the caller's count axis (outputs over total counts have ``K_total + 1``).
        c: ``[B]`` per-row shift of the logits used inside (detached; every result is invariant to it).
        batch_shape, dtype: the caller's batch shape and dtype.
    """

    theta: Tensor
    phi: Tensor
    free: Tensor
    forced: Tensor
    available: Tensor
    n_forced: Tensor
    n_free: Tensor
    K_total: int
    c: Tensor
    batch_shape: torch.Size
    dtype: torch.dtype

    @property
    def n(self) -> int:
        return self.theta.shape[-1]

    @property
    def K(self) -> int:
        return self.phi.shape[-1] - 1

    def unflatten(self, x: Tensor) -> Tensor:
        """``[..., B, m]`` → ``[..., *batch_shape, m]``."""
        return x.reshape(*x.shape[:-2], *self.batch_shape, x.shape[-1])


def tilt_to(theta: Tensor, target: Tensor) -> Tensor:
    """Per-row shift ``c [B]`` with ``sum_i sigmoid(theta_i + c) ≈ target`` (clamped to ``[0.5, m - 0.5]``)."""
    with torch.no_grad():
        finite = torch.isfinite(theta)
        m = finite.sum(-1).to(theta.dtype)
        t = torch.minimum(target.to(theta.dtype).clamp(min=0.5), (m - 0.5).clamp(min=0.5))
        frac = (t / m.clamp(min=1.0)).clamp(1e-6, 1 - 1e-6)
        lg = torch.log(frac) - torch.log1p(-frac)
        tmax = torch.where(finite, theta, -math.inf).amax(-1)
        tmin = torch.where(finite, theta, math.inf).amin(-1)
        tmax = torch.where(m == 0, 0.0, tmax)
        tmin = torch.where(m == 0, 0.0, tmin)
        lo, hi = lg - tmax, lg - tmin
        c = 0.5 * (lo + hi)
        for _ in range(TILT_ITERATIONS):
            s = torch.sigmoid(theta + c.unsqueeze(-1))
            f = s.sum(-1) - t
            fp = (s * (1 - s)).sum(-1)
            lo = torch.where(f < 0, c, lo)
            hi = torch.where(f > 0, c, hi)
            newton = c - f / fp
            c = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
        return c


def _row(i: int, batch_shape: torch.Size) -> str:
    if not len(batch_shape):
        return ""
    idx = []
    for size in reversed(batch_shape):
        idx.append(i % size)
        i //= size
    return f" in row {tuple(reversed(idx))}"


def prepare_counts(logits: Tensor, counts: object, mask: Tensor | None = None, *, name: str = "logits"):
    """Validate ``(logits, counts, mask)`` and reduce it to a :class:`CountProblem`.

    Raises ``ValueError`` for NaN logits and for rows where the constraint allows no subset of the available
    items (e.g. ``Exactly(k)`` with ``k`` above the available items, ``AtMost(k)`` with more than ``k``
    ``+inf`` logits).
    """
    logits = check_logits(logits, name)
    mask = check_mask(mask, logits)
    constraint = as_constraint(counts)
    batch_shape, n, device = logits.shape[:-1], logits.shape[-1], logits.device
    dt = compute_dtype(logits.dtype)
    phi_full = constraint.log_potentials(batch_shape, n, dt, device)
    K_total = phi_full.shape[-1] - 1
    x = logits.reshape(-1, n).to(dt)
    phi_full = phi_full.reshape(-1, K_total + 1)
    B = x.shape[0]
    with torch.no_grad():
        nan_rows = torch.nonzero(torch.isnan(x).any(-1)).flatten()
        if len(nan_rows):
            raise ValueError(f"{name} contains NaN{_row(int(nan_rows[0]), batch_shape)}")
        avail = x != -math.inf
        if mask is not None:
            avail = avail & mask.reshape(-1, n)
        forced = avail & (x == math.inf)
        free = avail & ~forced
        n_forced, n_free = forced.sum(-1), free.sum(-1)
        K = max(0, min(K_total, int(n_free.max()) if B else 0))
        j = torch.arange(K + 1, device=device)
        src = j + n_forced.unsqueeze(-1)  # total count of j free items
        ok = (src <= K_total) & (j <= n_free.unsqueeze(-1))
    # the gather keeps the autograd link to phi (a learned count prior)
    phi = torch.where(ok, phi_full.gather(-1, src.clamp(max=K_total)), -math.inf)
    with torch.no_grad():
        allowed = ok & (phi > -math.inf)
        empty = torch.nonzero(~allowed.any(-1)).flatten()
        if len(empty):
            i = int(empty[0])
            raise ValueError(
                f"the count constraint {constraint!r} allows no subset of the available items"
                f"{_row(i, batch_shape)}: {int(n_free[i])} free and {int(n_forced[i])} forced (+inf) items, "
                f"allowed totals {torch.nonzero(phi_full[i] > -math.inf).flatten().tolist()}"
            )
        jj = j.to(dt)
        lo = torch.where(allowed, jj, math.inf).amin(-1)
        hi = torch.where(allowed, jj, -math.inf).amax(-1)
    theta = torch.where(free, x, torch.full((), -math.inf, dtype=dt, device=device))
    c = tilt_to(theta.detach(), 0.5 * (lo + hi)) if B else torch.zeros(0, dtype=dt, device=device)
    return CountProblem(theta, phi, free, forced, avail, n_forced, n_free, K_total, c, batch_shape, logits.dtype)
