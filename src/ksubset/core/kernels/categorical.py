"""Rows that choose one item (``k = 1``): the categorical's probabilities, its draw and ``Cov(z) v``, one pass
per row (used by :mod:`..closed_form` on the CPU).

The exponentials stay with PyTorch (vectorised; numba calls libm one value at a time, about 3x slower here)
and are taken without the usual shift by the row's maximum, which costs two more passes over ``[B, n]``: a row
whose logits leave a range where ``exp`` neither overflows nor underflows is redone here with the shift.
Everything after the exponentials is here: the normaliser and the cumulative weights in float64, the probabilities, and
the inverse-CDF draw. With tensor operations the same step takes about twenty passes over ``[B, n]`` (the
cumulative sum, the interval tests, masks and dtype conversions), which cost more than the relaxation that
SIMPLE replaces at ``k = 1``.
"""

from __future__ import annotations

import math

import numpy as np

from .common import _raw


@_raw
def _categorical_rows(theta, e, active, u, z, p, lim, b0, b1):
    """Rows ``b0 .. b1-1``: ``p[b] = e[b] / sum(e[b])`` and one draw per sample, ``z[s, b, j] = 1`` for the
    item ``j`` whose interval ``[c_{j-1}, c_j)`` of the cumulative weights holds ``u[s, b] * c_n``.

    ``theta [B, n]`` finite or ``-inf`` (an active row has a finite entry); ``e [B, n]`` ``exp(theta)``, which
    is used as the weights where the row's free logits lie in ``[-lim, lim]`` (no overflow, no subnormal
    weight: ``lim`` is 80 for float32, 700 for float64) and overwritten with ``exp(theta - max)`` elsewhere;
    ``active [B]`` bool (rows that draw; the others get ``p = 0`` and no draw); ``u [S, B]`` uniforms in
    ``[0, 1)``; ``z [S, B, n]`` zeros (written); ``p [B, n]`` (written).
    """
    n = e.shape[1]
    S = u.shape[0]
    for b in range(b0, b1):
        if not active[b]:
            for i in range(n):
                p[b, i] = 0.0
            continue
        lo = np.inf
        hi = -np.inf
        for i in range(n):
            t = theta[b, i]
            if t > -np.inf:
                lo = min(lo, t)
                hi = max(hi, t)
        if hi > lim or lo < -lim:  # rare: shift by the maximum (one libm call per item)
            for i in range(n):
                e[b, i] = math.exp(theta[b, i] - hi)
        s = 0.0
        for i in range(n):
            s += e[b, i]
        r = 1.0 / s
        for i in range(n):
            p[b, i] = e[b, i] * r
        for si in range(S):
            # the drawn item is the first whose c_j exceeds the target: the number of c_j <= target
            # (counted without a branch: the position is random, a branch on it is mispredicted)
            target = u[si, b] * s
            c = 0.0
            pick = 0
            for i in range(n):
                c += e[b, i]
                pick += c <= target
            if pick == n:  # target >= c_n, by rounding only: the last item with weight
                pick -= 1
                while e[b, pick] == 0.0:
                    pick -= 1
            z[si, b, pick] = 1


@_raw
def _categorical_cov_rows(p, theta, v, out, b0, b1):
    """``out[b] = p[b] (v[b] - p[b] . v[b])`` on the free items (``theta > -inf``; 0 elsewhere), rows
    ``b0 .. b1-1``; ``v`` is read only on free items, so an infinite entry elsewhere does not spread."""
    n = p.shape[1]
    for b in range(b0, b1):
        d = 0.0
        for i in range(n):
            d += p[b, i] * v[b, i] if theta[b, i] > -np.inf else 0.0
        for i in range(n):
            out[b, i] = p[b, i] * (v[b, i] - d) if theta[b, i] > -np.inf else 0.0
