"""One long row on two threads: each half of its items is swept from its own end of the row.

A row's sweep is sequential over its items, so a single row of a million items would use one core. Reading
the second half of the row backwards turns the backward vector into a forward table:
``R_i[u] = Pr(S_{i..m} = k - u)`` is the forward table of the reversed items, read at ``k - u``. So

1. (both halves at once) the forward pass of :mod:`.forward` over the first half, and over the second half
   in reverse order, each keeping its checkpoints and its last block;
2. (serially, ``O(k S)``) ``Pr(S = k) = sum_j A[j] A'[k - j]`` from the two last rows ``A`` and ``A'``; each
   half's end vector is the other's last row flipped (``G`` flipped for ``H``); and per sample the number of
   items the first half supplies, drawn from ``A[j] A'[k - j] / Pr(S = k)``;
3. (both halves at once) the backward sweep of :mod:`.backward` over each half from its end vector.

The count of the first half is drawn with the uniform of that half's first swept item, which is then
recycled for the item's own draw: ``(U - F(j - 1)) / Pr(j)`` is uniform on ``[0, 1)`` and independent of the
drawn count ``j`` (``F`` the count's distribution function). The split runs when rows are fewer than threads
and long (:data:`SPLIT_MIN_ITEMS`); a split row draws other samples than an unsplit row from the same
uniforms (the same law).
"""

from __future__ import annotations

import math

import numpy as np

from .backward import _centre, _entropy, _sweep_back
from .common import _LN2, _jit, _raw
from .forward import _block_size, _forward
from .tilt import _setup

#: Rows with at least this many free items are split over two threads when rows are fewer than threads.
SPLIT_MIN_ITEMS = 1 << 16


@_raw
def _half(m, h):
    """Offset and length of half ``h`` (0 or 1) of ``m`` items in their stored order (the first has ``m // 2``)."""
    m1 = m // 2
    return (0, m1) if h == 0 else (m1, m - m1)


@_raw
def _last(mh, s):
    """Row of the last forward vector in the last block of a half of ``mh`` items."""
    return mh - ((mh + s) // s - 1) * s


@_raw
def _prepare(th, k, v, idx, x, p, q, w, with_g):
    """Tilt the row (and centre ``v`` into ``w``), then reverse the second half of the gathered items in
    place. Returns ``m``, the number of free items (the first half is ``m // 2`` items)."""
    m, _ = _setup(th, k, idx, x, p, q)
    if k == 0 or k == m:
        return m
    if with_g:
        _centre(v, idx, p, w, m)
    lo = m // 2
    hi = m - 1
    while lo < hi:
        idx[lo], idx[hi] = idx[hi], idx[lo]
        x[lo], x[hi] = x[hi], x[lo]
        p[lo], p[hi] = p[hi], p[lo]
        q[lo], q[hi] = q[hi], q[lo]
        if with_g:
            w[lo], w[hi] = w[hi], w[lo]
        lo += 1
        hi -= 1
    return m


@_jit
def _halves_forward(p, q, w, m, k, dn, s, with_g, ta, tg, ea, ca, cg, ce, h0, h1):
    """Step 1 for halves ``h0 .. h1-1`` (half ``h`` covers items ``h * (m // 2)`` on, in their stored order)."""
    for h in range(h0, h1):
        o, mh = _half(m, h)
        nb = (mh + s) // s
        wh = w[o : o + mh] if with_g else w
        ph, qh = p[o : o + mh], q[o : o + mh]
        _forward(ta[h], tg[h], ea[h], ca[h], cg[h], ce[h], with_g, s, nb, ph, qh, wh, mh, m, k, dn)


@_jit
def _combine(ta, tg, ea, m, k, s, with_g, rr, hh, er, need, u_first, u, b, idx, L):
    """Step 2: each half's end vectors (row 0 of ``rr[h]``, ``hh[h]``, exponent ``er[h]``), the counts per
    sample (``need[h]``), the recycled uniforms of the first half's first swept item (``u_first``).

    Returns ``(zk, ez, gbar)`` with ``zk 2^ez = Pr(S = k)`` and ``gbar = E[z . w]``; ``zk`` is not a positive
    finite number when the row cannot be computed."""
    m1 = m // 2
    la, lb = _last(m1, s), _last(m - m1, s)
    for h in range(2):
        for t in range(L):
            rr[h, 0, t] = 0.0
            rr[h, 1, t] = 0.0
            hh[h, 0, t] = 0.0
            hh[h, 1, t] = 0.0
    jlo, jhi = max(0, k - (m - m1)), min(m1, k)  # counts the first half can supply (its last band)
    for j in range(jlo, jhi + 1):  # R[j] = Pr(the other half supplies k - j): its last row, flipped
        rr[0, 0, j] = ta[1, lb, k - j]
        rr[1, 0, k - j] = ta[0, la, j]
        if with_g:
            hh[0, 0, j] = tg[1, lb, k - j]
            hh[1, 0, k - j] = tg[0, la, j]
    zk = 0.0
    g = 0.0
    for j in range(jlo, jhi + 1):
        zk += ta[0, la, j] * rr[0, 0, j]
        if with_g:
            g += tg[0, la, j] * rr[0, 0, j] + ta[0, la, j] * hh[0, 0, j]
    er[0] = ea[1, lb]
    er[1] = ea[0, la]
    ez = ea[0, la] + ea[1, lb]
    if not (zk > 0.0 and zk < np.inf):
        return zk, ez, 0.0
    gbar = g / zk if with_g else 0.0
    jmax = jlo
    for j in range(jlo, jhi + 1):
        if ta[0, la, j] * rr[0, 0, j] > 0.0:
            jmax = j
    item = idx[m1 - 1]  # the first half's first swept item
    for si in range(u.shape[0]):
        target = u[si, b, item] * zk
        cum = 0.0
        j = -1
        for jj in range(jlo, jhi + 1):
            wj = ta[0, la, jj] * rr[0, 0, jj]
            if wj > 0.0 and target < cum + wj:
                j = jj
                break
            cum += wj
        if j < 0:  # rounding left the target at the sum: the last count with weight
            j = jmax
            cum -= ta[0, la, j] * rr[0, 0, j]
        r = (target - cum) / (ta[0, la, j] * rr[0, 0, j])
        u_first[si] = min(max(r, 0.0), 1.0 - 2.0**-53)
        need[0, si] = j
        need[1, si] = k - j
    return zk, ez, gbar


@_jit
def _halves_backward(
    ta, tg, ea, ca, cg, ce, rr, hh, er, need, with_g, want_mu, s, idx, x, p, q, w, m, k, dn,
    zk, ez, gbar, u, b, u_first, z, mu_out, cov_out, h0, h1,
):  # fmt: skip
    """Step 3 for halves ``h0 .. h1-1``."""
    for h in range(h0, h1):
        o, mh = _half(m, h)
        nb = (mh + s) // s
        wh = w[o : o + mh] if with_g else w
        uf = u_first if h == 0 else u_first[:0]
        _sweep_back(
            ta[h], tg[h], ea[h], ca[h], cg[h], ce[h], rr[h], hh[h], need[h], with_g, want_mu, s, nb,
            idx[o : o + mh], x[o : o + mh], p[o : o + mh], q[o : o + mh], wh, mh, m, k, dn,
            zk, ez, er[h], gbar, u, b, uf, z, mu_out, cov_out,
        )  # fmt: skip


def split_row_sweep(th, k, limit, want_mu, want_cov, want_h, v, u, b, z, mu_out, cov_out, h_out, run) -> bool:
    """The sweep of row ``b`` (as :func:`.backward._row_sweep`: samples into ``z[:, b]``, marginals into
    ``mu_out[b]``, ``Cov v`` into ``cov_out[b]``, entropy into ``h_out[b]``), its halves on two threads.

    ``th [B, n]`` float64, ``k [B]`` int64, ``limit`` the largest forward table kept whole (entries),
    ``run(fn, B, args)`` runs ``fn(*args, b0, b1)`` over ``0 .. B-1`` on the threads. The row must have
    ``m >= 2`` free items and ``0 < k[b] < m``. Returns False when the row could not be computed.
    """
    n = th.shape[1]
    kb = int(k[b])
    with_g = bool(want_cov)
    idx = np.empty(n, np.int64)
    x, p, q = np.empty(n), np.empty(n), np.empty(n)
    w = np.empty(n if with_g else 1)
    m = _prepare(th[b], kb, v[b], idx, x, p, q, w, with_g)
    s = _block_size(m - m // 2, kb, limit)
    dn = 0  # banded (the dense layout is for short rows' vector loops)
    L = kb + 2
    rows, nbmax = min(s, m + 1), (m - m // 2 + s) // s
    ta = np.empty((2, rows, L))
    tg = np.empty((2, rows if with_g else 1, L))
    ea = np.empty((2, rows), np.int64)
    ca = np.empty((2, nbmax, L))
    cg = np.empty((2, nbmax if with_g else 1, L))
    ce = np.empty((2, nbmax), np.int64)
    run(_halves_forward, 2, (p, q, w, m, kb, dn, s, with_g, ta, tg, ea, ca, cg, ce))
    S = u.shape[0]
    rr, hh = np.empty((2, 2, L)), np.empty((2, 2, L))
    er = np.empty(2, np.int64)
    need = np.empty((2, S), np.int64)
    u_first = np.empty(S)
    zk, ez, gbar = _combine(ta, tg, ea, m, kb, s, with_g, rr, hh, er, need, u_first, u, b, idx, L)
    if not (0.0 < zk < math.inf):
        return False
    args = (ta, tg, ea, ca, cg, ce, rr, hh, er, need, with_g, want_mu or want_h, s, idx, x, p, q, w, m, kb, dn)
    run(_halves_backward, 2, (*args, zk, ez, gbar, u, b, u_first, z, mu_out[b], cov_out[b]))
    if want_h:
        h_out[b] = _entropy(x, idx, mu_out[b], m, math.log(zk) + ez * _LN2)
    return True
