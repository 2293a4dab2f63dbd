"""Step 1, the tilt: gather a row's free items and find ``c`` with ``sum_i sigmoid(theta_i + c) = k``.

Under the tilted Bernoullis ``p_i = sigmoid(theta_i + c)`` the count ``S`` has mean ``k`` (to 0.05 items), so
``k`` is the mode of ``S`` and ``Pr(S = k) >= 1 / (m + 1)``; and
``log Z = log Pr(S = k) - c k + sum_i softplus(theta_i + c)``. Any ``c`` is exact: the tilt only has to make
``Pr(S = k)`` large, so that the probability-space tables of :mod:`.forward` need no logarithms.
"""

from __future__ import annotations

import math

import numpy as np

from .common import _flush, _raw

_SPREAD = 1200.0  # logit spread up to which the Newton iterations take one exp per item
_TILT_TOL = 0.05
_MAX_NEWTON = 200


@_raw
def _newton_update(c, f, fp, lo, hi):
    """One safeguarded Newton step for an increasing ``f(c)``; returns ``(c, lo, hi)``."""
    if f < 0.0:
        lo = c
    else:
        hi = c
    if fp > 0.0:
        cn = c - f / fp
        if lo < cn < hi:
            return cn, lo, hi
    return 0.5 * (lo + hi), lo, hi


@_raw
def _setup(th, k, idx, x, p, q):
    """Gather the free items of one row, tilt, and fill the tilted probabilities. Returns ``(m, c)``.

    ``x`` receives the tilted logits ``theta_i + c`` and ``p``/``q`` the probabilities
    ``sigmoid(x)``/``sigmoid(-x)``. Trivial rows (``k == 0`` or ``k == m``) return ``c = 0`` with ``x``
    the raw logits and ``p``/``q`` unfilled.

    The tilt solves ``sum_i sigmoid(x_i + c) = k`` by safeguarded Newton inside a bracket that is valid by
    construction (at ``lo`` every term is ``<= k/m``, at ``hi`` every term is ``>= k/m``), to 0.05 items:
    any ``c`` is exact, the tilt only has to make ``Pr(S = k)`` large. When the logits span at most
    ``_SPREAD`` nats, the Newton iterations take ``exp`` once per item (``sigmoid(x_i + c) = 1 / (1 + E_i T)``
    with ``E_i = exp(x_ref - x_i)`` and ``T = exp(-c - x_ref)``, neither of which can overflow or
    underflow), else once per item and iteration. Either way ``p_i = sigmoid(x_i + c)`` to a relative
    ``eps * |x_i + c|``, the rounding of the tilted logit ``x_i + c`` itself.
    """
    m = 0
    for i in range(th.shape[0]):
        if th[i] > -np.inf:
            idx[m] = i
            x[m] = th[i]
            m += 1
    if k == 0 or k == m:
        return m, 0.0
    tmax = x[0]
    tmin = x[0]
    tsum = 0.0
    for i in range(m):
        tmax = max(tmax, x[i])
        tmin = min(tmin, x[i])
        tsum += x[i]
    frac = k / m
    lg = math.log(frac) - math.log1p(-frac)
    lo = lg - tmax
    hi = lg - tmin
    c = min(max(lg - tsum / m, lo), hi)
    if tmax - tmin <= _SPREAD:
        xref = 0.5 * (tmax + tmin)
        for i in range(m):
            p[i] = math.exp(xref - x[i])  # E_i
        for _ in range(_MAX_NEWTON):
            t = math.exp(-c - xref)
            s = 0.0
            fp = 0.0
            for i in range(m):
                d = 1.0 / (1.0 + p[i] * t)
                s += d
                fp += d * (1.0 - d)
            f = s - k
            if abs(f) <= _TILT_TOL or hi - lo <= 1e-13 * max(1.0, abs(c)):
                break
            c, lo, hi = _newton_update(c, f, fp, lo, hi)
        t = math.exp(-c - xref)
        for i in range(m):
            x[i] += c
            e = p[i] * t  # exp(-x_i): overflows to inf when x_i < -709, where e * d is inf * 0
            d = 1.0 / (1.0 + e)
            p[i] = _flush(d)
            q[i] = _flush(e * d) if e < np.inf else 1.0  # (a select: the loop stays vectorisable)
        return m, c
    else:
        for _ in range(_MAX_NEWTON):
            s = 0.0
            fp = 0.0
            for i in range(m):
                y = min(max(x[i] + c, -700.0), 700.0)
                d = 1.0 / (1.0 + math.exp(-y))
                s += d
                fp += d * (1.0 - d)
            f = s - k
            if abs(f) <= _TILT_TOL or hi - lo <= 1e-13 * max(1.0, abs(c)):
                break
            c, lo, hi = _newton_update(c, f, fp, lo, hi)
    for i in range(m):
        x[i] += c
        y = x[i]
        e = math.exp(-abs(y))
        d = 1.0 / (1.0 + e)
        if y >= 0.0:
            p[i] = d
            q[i] = _flush(e * d)
        else:
            p[i] = _flush(e * d)
            q[i] = d
    return m, c
