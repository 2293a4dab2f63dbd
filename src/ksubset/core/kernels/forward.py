"""Step 2, the forward table in probability space, ``A_i[j] = Pr(S_{1..i} = j)`` (and its expectation-semiring
twin ``G_i[j] = E[(sum_{l <= i} w_l z_l) 1{S_i = j}]`` for covariance-vector products).

``A_i[j] = q_i A_{i-1}[j] + p_i A_{i-1}[j-1]`` on the band ``max(0, k - (m - i)) <= j <= min(i, k)`` (other
entries cannot reach ``S = k``). Every entry is a probability and the largest entry of every row is at least
``Pr(S = k) / (k + 1) >= 1 / ((m + 1)(k + 1))``. Entries below ``2^-510`` (and ``p_i``, ``q_i`` below it) are
flushed to 0: what they could contribute is below ``2^-400`` relative to the answer, and no product of two
kept numbers is subnormal (subnormal arithmetic is ~100x slower on x86). A power-of-two exponent per row,
checked every ``RESCALE_EVERY`` rows, is a safety net.

Memory: a table that fits is kept whole; otherwise every ``s``-th row (``s ~ sqrt(n)``) is kept as a
checkpoint and each block of ``s`` rows is recomputed from its checkpoint when the backward sweep
(:mod:`.backward`) reaches it (one more forward pass).

Vectors have length ``k + 2`` (or the dense width + 2). A forward vector after item ``i`` is valid on the band
``[lo_i, hi_i]`` and holds an explicit 0 at ``hi_i + 1``; with these guard zeros the recurrences need no edge
cases. Vectors are rows of 2-d arrays addressed by row number (no array views inside loops: each view costs
reference counting).
"""

from __future__ import annotations

import math

import numpy as np

from .common import _HI_SCALE, _LO_SCALE, _RESCALE, _U, _U1, _flush, _flush_signed, _jit, _raw
from .tilt import _setup


@_raw
def _fstep(T, pr, cr, p, q, lo, hi):
    """``T[cr, t] = q T[pr, t] + p T[pr, t-1]`` on ``[lo, hi]`` (forward count recursion)."""
    t0 = lo
    if lo == 0:
        T[cr, 0] = _flush(q * T[pr, 0])
        t0 = 1
    for t in range(_U(t0), _U(hi + 1)):
        T[cr, t] = _flush(q * T[pr, t] + p * T[pr, t - _U1])
    T[cr, hi + 1] = 0.0


@_raw
def _gstep(G, A, pr, cr, p, q, w, lo, hi):
    """``G[cr, t] = q G[pr, t] + p (G[pr, t-1] + w A[pr, t-1])`` (expectation semiring, forward)."""
    t0 = lo
    if lo == 0:
        G[cr, 0] = _flush_signed(q * G[pr, 0])
        t0 = 1
    pw = p * w
    for t in range(_U(t0), _U(hi + 1)):
        G[cr, t] = _flush_signed(q * G[pr, t] + p * G[pr, t - _U1] + pw * A[pr, t - _U1])
    G[cr, hi + 1] = 0.0


@_raw
def _rescale(T, G, row, with_g, lo, hi):
    """Exponent change (0 if none) that brings ``max T[row, lo..hi]`` back into ``[2^-200, 2^200]``."""
    mx = 0.0
    for t in range(_U(lo), _U(hi + 1)):
        mx = max(mx, T[row, t])
    if mx == 0.0 or (_LO_SCALE <= mx <= _HI_SCALE):
        return 0
    f = math.frexp(mx)[1]
    s = math.ldexp(1.0, -f)
    for t in range(_U(lo), _U(hi + 1)):
        T[row, t] = _flush(T[row, t] * s)
    if with_g:
        for t in range(_U(lo), _U(hi + 1)):
            G[row, t] = _flush_signed(G[row, t] * s)
    return f


@_raw
def _dense_width(k):
    """Counts computed at every item in dense mode: a multiple of 16 that is at least ``k + 1``."""
    return (k + 16) // 16 * 16


@_raw
def _band(i, m, k, dn):
    """Band ``[lo, hi]`` of the forward vector after item ``i``; ``[0, dn]`` in dense mode (``dn > 0``).

    Dense mode computes every count up to ``dn`` (a multiple of 16, at least ``k + 1``) at every item:
    a little more arithmetic for small ``k``, but loops whose trip count is a multiple of the vector
    length, so that they run vectorised instead of in LLVM's scalar remainder loop.
    """
    if dn > 0:
        return 0, dn
    return max(0, k - (m - i)), min(i, k)


@_raw
def _fwd_rows(ta, tg, ea, with_g, r0, r1, p, q, w, mb, k, dn):
    """Forward rows ``r0 + 1 .. r1`` into ``ta[r - r0]`` from row ``r0`` in ``ta[0]`` (and ``tg``); bands as in a row of
    ``mb`` items (see :func:`_forward`)."""
    for r in range(r0 + 1, r1 + 1):
        pi = p[r - 1]
        qi = q[r - 1]
        lo, hi = _band(r, mb, k, dn)
        pr = r - 1 - r0
        cr = r - r0
        _fstep(ta, pr, cr, pi, qi, lo, hi)
        if with_g:
            _gstep(tg, ta, pr, cr, pi, qi, w[r - 1], lo, hi)
        e = ea[pr]
        if r % _RESCALE == 0:
            e += _rescale(ta, tg, cr, with_g, lo, hi)
        ea[cr] = e


@_raw
def _block_size(n, K, limit):
    """Rows per block of the forward table: all ``n + 1`` if they fit in ``limit`` entries."""
    if (n + 1) * (K + 2) <= limit:
        return n + 1
    return int(math.sqrt(n + 1.0)) + 1


@_raw
def _forward(ta, tg, ea, ca, cg, ce, with_g, s, nb, p, q, w, m, mb, k, dn):
    """The whole forward pass over ``m`` items; keeps checkpoints (when ``nb > 1``) and leaves the last block in
    ``ta``. Bands are those of a row of ``mb >= m`` items (``mb > m``: these are the first ``m`` items of a row
    whose other ``mb - m`` items are swept separately, see :mod:`.split`)."""
    L = dn + 2 if dn > 0 else 2
    for t in range(L):
        ta[0, t] = 0.0
        if with_g:
            tg[0, t] = 0.0
    ta[0, 0] = 1.0
    ea[0] = 0
    for blk in range(nb):
        r0 = blk * s
        r1 = min(r0 + s - 1, m)
        if blk > 0:  # row r0 from the last row of the previous block (rows s-1 and 0 differ: s >= 2)
            lo, hi = _band(r0, mb, k, dn)
            _fstep(ta, s - 1, 0, p[r0 - 1], q[r0 - 1], lo, hi)
            if with_g:
                _gstep(tg, ta, s - 1, 0, p[r0 - 1], q[r0 - 1], w[r0 - 1], lo, hi)
            ea[0] = ea[s - 1] + _rescale(ta, tg, 0, with_g, lo, hi)
        if nb > 1:
            for t in range(max(k, dn) + 2):
                ca[blk, t] = ta[0, t]
            ce[blk] = ea[0]
            if with_g:
                for t in range(max(k, dn) + 2):
                    cg[blk, t] = tg[0, t]
        _fwd_rows(ta, tg, ea, with_g, r0, r1, p, q, w, mb, k, dn)


@_raw
def _restore(ta, tg, ea, ca, cg, ce, with_g, blk, s, p, q, w, m, mb, k, dn):
    """Recompute block ``blk`` of the forward table from its checkpoint."""
    r0 = blk * s
    r1 = min(r0 + s - 1, m)
    for t in range(max(k, dn) + 2):
        ta[0, t] = ca[blk, t]
    ea[0] = ce[blk]
    if with_g:
        for t in range(max(k, dn) + 2):
            tg[0, t] = cg[blk, t]
    _fwd_rows(ta, tg, ea, with_g, r0, r1, p, q, w, mb, k, dn)


@_jit
def _log_z_rows(theta, k, K, out, dense, b0, b1):
    n = theta.shape[1]
    idx = np.empty(n, np.int64)
    x = np.empty(n)
    p = np.empty(n)
    q = np.empty(n)
    a = np.empty((2, max(K, _dense_width(K) if dense else 0) + 2))
    for b in range(b0, b1):
        kb = k[b]
        m, c = _setup(theta[b], kb, idx, x, p, q)
        if kb == 0:
            out[b] = 0.0
            continue
        if kb == m:
            tot = 0.0
            for i in range(m):
                tot += x[i]
            out[b] = tot
            continue
        dn = _dense_width(kb) if dense else 0
        for t in range(max(kb, dn) + 2):
            a[0, t] = 0.0
        a[0, 0] = 1.0
        e = 0
        for r in range(1, m + 1):
            lo, hi = _band(r, m, kb, dn)
            _fstep(a, (r - 1) & 1, r & 1, p[r - 1], q[r - 1], lo, hi)
            if r % _RESCALE == 0:
                e += _rescale(a, a, r & 1, False, lo, hi)
        softplus = 0.0
        for i in range(m):
            softplus += max(x[i], 0.0) + math.log1p(math.exp(-abs(x[i])))
        out[b] = math.log(a[m & 1, kb]) + e * math.log(2.0) - c * kb + softplus
