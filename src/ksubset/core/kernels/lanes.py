"""The lanes layout: ``LANES`` rows side by side, the innermost (vectorised) index running over rows.

For many short rows with small ``K``, where the per-row kernel's loops over ``j`` are too short to vectorise
well. Every row of a group walks all ``n`` items (an unavailable item is an identity step, ``p = 0, q = 1``) and
all counts ``j <= min(i, K)`` (no lower band); tables are kept whole (no checkpoints) and there is no
rescaling (each row's maximum stays ``>= Pr(S = k) / (k + 1)``, see :mod:`.forward`; a row whose
``Pr(S = k)`` is not a positive finite number is reported as failed and recomputed by the fallback).

Tables are ``[item, j * LANES + lane]``: a table row is one flat vector, so each recursion step is one long
vectorisable loop over ``f = j * LANES + lane`` (``f - LANES`` is count ``j - 1`` of the same lane), with the
per-lane coefficients tiled to the same layout (:func:`_tile`).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from .backward import _tiny_marginal
from .common import _TINY, _U, _flush, _flush_signed, _jit, _raw, _raw_nocache
from .tilt import _MAX_NEWTON, _SPREAD, _TILT_TOL, _newton_update, _setup

#: Rows processed side by side (the one setting: every lanes loop, table stride and the generated dot
#: products use it). 8 float64 lanes fill one AVX-512 register or two AVX2 registers.
LANES = 8
_LANES = LANES
_UL = np.uint64(LANES)
_PRODUCT_RUN = 512  # factors >= 1/2 multiplied before a logarithm: >= 2^-512, a normal number


def _lane_dots_source(lanes: int) -> str:
    """Source of ``_lane_dots(X, Y, U, V, two, it, ra, jh, out)``, unrolled over the lanes:
    ``out[w] = sum_{j <= jh} X[it, j L + w] Y[ra, (j + 1) L + w] (+ U[it, j L + w] V[ra, (j + 1) L + w] if two)``.

    Each lane's sum stays in a local (a register); summed in an array, it would be loaded and stored at every
    ``j``, because LLVM cannot rule out that the array aliases the tables (measured: 4% of a whole L2X-sized
    call). Generated from :data:`LANES` so that the lane count stays one setting.
    """
    acc = [f"d{w}" for w in range(lanes)]
    one = [f"            {a} += X[it, f + {w}] * Y[ra, f + {lanes + w}]" for w, a in enumerate(acc)]
    two = [
        f"            {a} += X[it, f + {w}] * Y[ra, f + {lanes + w}] + U[it, f + {w}] * V[ra, f + {lanes + w}]"
        for w, a in enumerate(acc)
    ]
    return "\n".join(
        [
            "def _lane_dots(X, Y, U, V, two, it, ra, jh, out):",
            f"    {' = '.join(acc)} = 0.0",
            "    if two:",
            "        for j in range(jh + 1):",
            f"            f = j * {lanes}",
            *two,
            "    else:",
            "        for j in range(jh + 1):",
            f"            f = j * {lanes}",
            *one,
            *[f"    out[{w}] = {a}" for w, a in enumerate(acc)],
        ]
    )


def _tile_source(lanes: int) -> str:
    """Source of ``_tile(X, Y, Xt, n, K)``: ``Xt[i, j L + w] = X[i, w] Y[i, w]`` for ``j <= K + 1``, the per-lane
    coefficients laid out like a table row. The ``L`` values are read into locals before the stores, so that
    LLVM's SLP vectoriser turns each group into one vector store (with interleaved loads and stores it must
    assume aliasing)."""
    xs = [f"x{w}" for w in range(lanes)]
    return "\n".join(
        [
            "def _tile(X, Y, Xt, n, K):",
            "    for i in range(n):",
            *[f"        {x} = X[i, {w}] * Y[i, {w}]" for w, x in enumerate(xs)],
            "        for j in range(K + 2):",
            f"            f = j * {lanes}",
            *[f"            Xt[i, f + {w}] = {x}" for w, x in enumerate(xs)],
        ]
    )


def _sigmoid_sums_source(lanes: int) -> str:
    """Source of ``_sigmoid_sums(E, t, n, s, fp)``: per lane ``w``, ``s[w] = sum_i d`` and ``fp[w] = sum_i d (1 - d)``
    with ``d = 1 / (1 + E[i, w] t[w])`` (the tilt's Newton sums), accumulated in locals for the reason given at
    :func:`_lane_dots_source`."""
    ws = range(lanes)
    return "\n".join(
        [
            "def _sigmoid_sums(E, t, n, s, fp):",
            *[f"    t{w} = t[{w}]" for w in ws],
            f"    {' = '.join(f's{w}' for w in ws)} = 0.0",
            f"    {' = '.join(f'f{w}' for w in ws)} = 0.0",
            "    for i in range(n):",
            *[f"        d{w} = 1.0 / (1.0 + E[i, {w}] * t{w})" for w in ws],
            *[f"        s{w} += d{w}" for w in ws],
            *[f"        f{w} += d{w} * (1.0 - d{w})" for w in ws],
            *[f"    s[{w}] = s{w}" for w in ws],
            *[f"    fp[{w}] = f{w}" for w in ws],
        ]
    )


_generated: dict = {}
exec(_lane_dots_source(_LANES), _generated)  # noqa: S102 - source built above from the lane count alone
exec(_tile_source(_LANES), _generated)  # noqa: S102
exec(_sigmoid_sums_source(_LANES), _generated)  # noqa: S102
# not cached on disk (generated code has no source file); compiled once per process, in well under a second
_lane_dots = _raw_nocache(_generated["_lane_dots"])
_tile = _raw_nocache(_generated["_tile"])
_sigmoid_sums = _raw_nocache(_generated["_sigmoid_sums"])

#: Work space of one thread for the lanes layout (float64 unless noted; ``F = (K + 2) * LANES``): per-lane
#: ``P``, ``Q``, ``Y``, ``Wt``, ``ONE [n, LANES]`` tilted probabilities, tilted logits, centred ``v`` and ones;
#: ``Pt``, ``Qt``, ``Ht [n, F]`` the coefficients ``p``, ``q``, ``p w`` tiled like a table row; ``A``, ``G
#: [n + 1, F]`` forward tables; ``R``, ``H [2, F]`` backward vectors; ``need [S, LANES]`` int64; ``kl``, ``ml
#: [LANES]`` int64 per-lane ``k`` and free count; ``zinv``, ``gbar``, ``dd``, ``ddg [LANES]`` per-lane
#: ``1 / Pr(S = k)``, ``E[z.w]`` and dot products; ``idx [n]`` int64, ``x``, ``p``, ``q [n]`` one wide row's
#: tilt; ``E [n, LANES]`` and ``st [8, LANES]`` the vectorised tilt's scratch.
LanesWorkspace = namedtuple(
    "LanesWorkspace", "P Q Y Wt ONE Pt Qt Ht A G R H need kl ml zinv gbar dd ddg idx x p q E st"
)


@_raw
def _lanes_tilt(theta, k, b0, b1, P, Q, Y, E, kl, ml, st, idx, x, p, q):
    """The tilt of :mod:`.tilt` for the rows ``b0..b1-1`` at once, the Newton iterations vectorised over lanes.

    Fills the tilted probabilities ``P``/``Q`` and logits ``Y`` ``[n, LANES]`` (unavailable items: ``p = 0``,
    ``q = 1``, ``y = -inf``), ``kl``/``ml`` (per-lane ``k`` and free count). Lanes past ``b1`` and trivial rows
    (``k = 0`` or ``k = m``) are dummies (``k = 0``, every item unavailable). Same equation, bracket,
    starting point and tolerance as :func:`.tilt._setup`, which still handles a row whose logits span more
    than ``_SPREAD`` nats. ``E`` ``[n, LANES]`` and ``st`` ``[8, LANES]`` are scratch.
    """
    n = theta.shape[1]
    c, lo, hi, xref, act, s, fp, t = st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7]
    for i in range(n):
        for w in range(_LANES):
            Y[i, w] = -np.inf
    for w in range(_LANES):
        kl[w] = 0
        ml[w] = 0
        act[w] = 0.0
        xref[w] = 0.0
        c[w] = 0.0
        b = b0 + w
        if b >= b1:
            continue
        m = 0
        tmax = -np.inf
        tmin = np.inf
        tsum = 0.0
        for i in range(n):
            v = theta[b, i]
            if v > -np.inf:
                m += 1
                tmax = max(tmax, v)
                tmin = min(tmin, v)
                tsum += v
        ml[w] = m
        kb = k[b]
        if kb == 0 or kb == m:
            continue
        kl[w] = kb
        if tmax - tmin > _SPREAD:  # rare: the per-row tilt below (one exp per item and iteration)
            act[w] = -1.0
            continue
        for i in range(n):
            Y[i, w] = theta[b, i]
        frac = kb / m
        lg = math.log(frac) - math.log1p(-frac)
        lo[w] = lg - tmax
        hi[w] = lg - tmin
        c[w] = min(max(lg - tsum / m, lo[w]), hi[w])
        xref[w] = 0.5 * (tmax + tmin)
        act[w] = 1.0
    for i in range(n):
        for w in range(_LANES):
            E[i, w] = math.exp(xref[w] - Y[i, w])  # exp(+inf) = inf for unavailable items: sigmoid 0
    for _ in range(_MAX_NEWTON):
        live = False
        for w in range(_LANES):
            live |= act[w] > 0.0
            t[w] = math.exp(-c[w] - xref[w])
        if not live:
            break
        _sigmoid_sums(E, t, n, s, fp)
        for w in range(_LANES):
            if act[w] > 0.0:  # (-1: a wide row, 0: converged or a dummy)
                f = s[w] - kl[w]
                if abs(f) <= _TILT_TOL or hi[w] - lo[w] <= 1e-13 * max(1.0, abs(c[w])):
                    act[w] = 0.0
                else:
                    c[w], lo[w], hi[w] = _newton_update(c[w], f, fp[w], lo[w], hi[w])
    for w in range(_LANES):
        t[w] = math.exp(-c[w] - xref[w])
    for i in range(n):
        for w in range(_LANES):
            e = E[i, w] * t[w]  # exp(-y): inf for unavailable items and below -709, where e * d is inf * 0
            d = 1.0 / (1.0 + e)
            P[i, w] = _flush(d)
            Q[i, w] = _flush(e * d) if e < np.inf else 1.0
            Y[i, w] += c[w]
    for w in range(_LANES):  # the wide rows (so far dummies: Y = -inf gave p = 0, q = 1)
        if act[w] < 0.0:
            m, c[w] = _setup(theta[b0 + w], kl[w], idx, x, p, q)
            for j in range(m):
                P[idx[j], w] = p[j]
                Q[idx[j], w] = q[j]
                Y[idx[j], w] = x[j]


@_raw
def _lanes_store(b0, b1, T, P, Q, Y):
    """Keep the tilt of rows ``b0..b1-1``: ``T[0 / 1 / 2, b] = P / Q / Y[:, lane]`` (for a later sweep)."""
    for w in range(b1 - b0):
        for i in range(P.shape[0]):
            T[0, b0 + w, i] = P[i, w]
            T[1, b0 + w, i] = Q[i, w]
            T[2, b0 + w, i] = Y[i, w]


@_raw
def _lanes_load(theta, k, b0, b1, T, P, Q, Y, kl, ml):
    """The tilt of rows ``b0..b1-1`` as :func:`_lanes_store` kept it (``kl``/``ml`` recounted from ``theta``)."""
    n = theta.shape[1]
    for w in range(_LANES):
        b = b0 + w
        m = 0
        if b < b1:
            for i in range(n):
                m += theta[b, i] > -np.inf
        ml[w] = m
        kl[w] = k[b] if b < b1 and 0 < k[b] < m else 0
        for i in range(n):
            if kl[w] > 0:
                P[i, w] = T[0, b, i]
                Q[i, w] = T[1, b, i]
                Y[i, w] = T[2, b, i]
            else:
                P[i, w] = 0.0
                Q[i, w] = 1.0
                Y[i, w] = -np.inf


@_raw
def _lanes_group(theta, k, K, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, mode, T, b0, b1, ws):
    """Rows ``b0 .. b1-1`` (at most ``LANES``) of the sweep, side by side, in the work space ``ws`` (a
    :data:`LanesWorkspace`). Writes the rows' samples ``z[:, b]``, ``mu_out[b]``, ``cov_out[b]``, ``h_out[b]``
    and ``ok[b]`` (False: the caller falls back to the tree engine). ``mode`` 0 tilts, 1 tilts and keeps the
    tilt in ``T [3, B, n]`` (see :func:`_lanes_store`), 2 takes the tilt from ``T`` (a sweep on the same
    logits that already tilted them: no exp, no Newton iteration)."""
    P, Q, Y, Wt, A, G, R, H = ws.P, ws.Q, ws.Y, ws.Wt, ws.A, ws.G, ws.R, ws.H
    Pt, Qt, Ht, need, kl, ml = ws.Pt, ws.Qt, ws.Ht, ws.need, ws.kl, ws.ml
    zinv, gbar, dd, ddg = ws.zinv, ws.gbar, ws.dd, ws.ddg
    n = theta.shape[1]
    S = u.shape[0]
    with_g = want_cov
    L = _LANES
    F = (K + 2) * L
    if mode == 2:
        _lanes_load(theta, k, b0, b1, T, P, Q, Y, kl, ml)
    else:
        _lanes_tilt(theta, k, b0, b1, P, Q, Y, ws.E, kl, ml, ws.st, ws.idx, ws.x, ws.p, ws.q)
        if mode == 1:
            _lanes_store(b0, b1, T, P, Q, Y)
    if with_g:  # v centred by its tilted mean, per lane (0 on unavailable items)
        for w in range(L):
            if kl[w] == 0:  # a dummy lane (past b1, or a trivial row)
                for i in range(n):
                    Wt[i, w] = 0.0
                continue
            sp = 0.0
            spv = 0.0
            for i in range(n):
                if P[i, w] > 0.0:
                    sp += P[i, w]
                    spv += P[i, w] * v[b0 + w, i]
            vbar = spv / sp if sp > 0.0 else 0.0
            for i in range(n):
                Wt[i, w] = v[b0 + w, i] - vbar if Y[i, w] > -np.inf else 0.0
    _tile(P, ws.ONE, Pt, n, K)
    _tile(Q, ws.ONE, Qt, n, K)
    if with_g:
        _tile(P, Wt, Ht, n, K)  # the source term's coefficient p_i w_i
    # forward tables
    for f in range(F):
        A[0, f] = 0.0
        G[0, f] = 0.0
    for w in range(L):
        A[0, w] = 1.0
    for i in range(1, n + 1):
        it = i - 1
        hw = (min(i, K) + 1) * L
        for f in range(_U(0), _UL):
            A[i, f] = _flush(Qt[it, f] * A[it, f])
        for f in range(_UL, _U(hw)):
            A[i, f] = _flush(Qt[it, f] * A[it, f] + Pt[it, f] * A[it, f - _UL])
        for f in range(_U(hw), _U(hw + L)):
            A[i, f] = 0.0
        if with_g:
            for f in range(_U(0), _UL):
                G[i, f] = _flush_signed(Qt[it, f] * G[it, f])
            for f in range(_UL, _U(hw)):
                G[i, f] = _flush_signed(
                    Qt[it, f] * G[it, f] + Pt[it, f] * G[it, f - _UL] + Ht[it, f] * A[it, f - _UL]
                )
            for f in range(_U(hw), _U(hw + L)):
                G[i, f] = 0.0
    for w in range(L):
        zk = A[n, kl[w] * L + w]
        zinv[w] = 1.0 / zk if (zk > 0.0 and zk < np.inf) else 0.0
        gbar[w] = G[n, kl[w] * L + w] * zinv[w] if with_g else 0.0
        if b0 + w < b1 and zinv[w] == 0.0:
            ok[b0 + w] = False
    # backward vectors R (and H), ping-pong rows ra / 1 - ra; R_{n+1}[u] = [u == k]; column K+1 stays 0
    for r in range(2):
        for f in range(F):
            R[r, f] = 0.0
            H[r, f] = 0.0
    for w in range(L):
        R[0, kl[w] * L + w] = 1.0
        for si in range(S):
            need[si, w] = kl[w]
    ra = 0
    for i in range(n, 0, -1):
        it = i - 1  # the item; its A_{i-1} is table row it
        # --- samples (per lane; j items still needed from items 1..i)
        if S > 0:
            for w in range(L):
                pw = P[it, w]
                if pw == 0.0:
                    continue
                for si in range(S):
                    j = need[si, w]
                    if j == 0:
                        continue
                    t1 = pw * A[it, (j - 1) * L + w]
                    tot = t1 + Q[it, w] * A[it, j * L + w]
                    if tot > 0.0:
                        take = u[si, b0 + w, it] * tot < t1
                    else:
                        take = True
                    if take:
                        z[si, b0 + w, it] = 1
                        need[si, w] = j - 1
        if not (want_mu or with_g):
            continue
        # --- marginals (and E[z_i z.w]) of item i: sum_j A_{i-1}[j] R_{i+1}[j+1], per lane
        jh = min(i - 1, K - 1)
        _lane_dots(A, R, A, R, False, it, ra, jh, dd)
        if with_g:
            _lane_dots(G, R, A, H, True, it, ra, jh, ddg)
        tiny = False
        for w in range(L):
            if b0 + w < b1 and kl[w] > 0:
                fw = P[it, w] * zinv[w]
                mui = min(dd[w] * fw, 1.0)
                tiny |= mui < _TINY
                if want_mu:
                    mu_out[b0 + w, it] = mui
                if with_g:
                    cov_out[b0 + w, it] = (ddg[w] + Wt[it, w] * dd[w]) * fw - mui * gbar[w]
        if tiny:  # rare (kept out of the loop above, which then vectorises): see backward._tiny_marginal
            for w in range(L):
                if b0 + w < b1 and kl[w] > 0 and Y[it, w] > -np.inf:  # (-inf: unavailable item)
                    mui = min(dd[w] * P[it, w] * zinv[w], 1.0)
                    if mui < _TINY:
                        mui = _tiny_marginal(Y[it, w], dd[w], math.log(zinv[w]))
                        fw = mui / dd[w] if dd[w] > 0.0 else 0.0
                        if want_mu:
                            mu_out[b0 + w, it] = mui
                        if with_g:
                            cov_out[b0 + w, it] = (ddg[w] + Wt[it, w] * dd[w]) * fw - mui * gbar[w]
        # --- R_i (and H_i) from R_{i+1}, counts u <= K
        rb = 1 - ra
        for f in range(_U(0), _U((K + 1) * L)):
            R[rb, f] = _flush(Qt[it, f] * R[ra, f] + Pt[it, f] * R[ra, f + _UL])
        if with_g:
            for f in range(_U(0), _U((K + 1) * L)):
                H[rb, f] = _flush_signed(
                    Qt[it, f] * H[ra, f] + Pt[it, f] * H[ra, f + _UL] + Ht[it, f] * R[ra, f + _UL]
                )
        ra = rb
    # trivial rows: k = m selects every free item
    for w in range(L):
        b = b0 + w
        if b < b1 and k[b] > 0 and k[b] == ml[w]:
            for i in range(n):
                if theta[b, i] > -np.inf:
                    if want_mu:
                        mu_out[b, i] = 1.0
                    for si in range(S):
                        z[si, b, i] = 1
    if want_h:
        _lanes_entropy(P, Q, Y, mu_out, zinv, kl, b0, b1, n, ws.st[5], ws.st[6], h_out)


@_raw
def _lanes_log_terms(P, Q, Y, mu_out, with_mu, b0, b1, n, acc, prod):
    """Per lane, ``acc[w] = sum_i softplus(y_i)`` over the available items, minus ``sum_i mu_i y_i`` with
    ``with_mu`` (the entropy's terms, see :func:`.backward._entropy_term`; ``log Z``'s without).

    With ``softplus(y) = max(y, 0) - log max(p, q)``, the logarithms of ``max(p, q) >= 1/2`` are taken of
    their products, a few hundred items at a time (no underflow), so the loop over items has no libm call and
    vectorises over lanes; each factor is within one rounding of its true value, so the result is within
    about ``n eps`` (absolute) of the per-item sum.
    """
    for w in range(_LANES):
        acc[w] = 0.0
        prod[w] = 1.0
    for i in range(n):
        for w in range(_LANES):
            y = Y[i, w]
            b = min(b0 + w, b1 - 1)  # (a dummy lane past b1 reads a real row; its result is discarded)
            mu = mu_out[b, i] if with_mu else 0.0
            acc[w] += max(y, 0.0) - mu * y if y > -np.inf else 0.0
            prod[w] *= max(P[i, w], Q[i, w])
        if i % _PRODUCT_RUN == _PRODUCT_RUN - 1:
            for w in range(_LANES):
                acc[w] -= math.log(prod[w])
                prod[w] = 1.0
    for w in range(_LANES):
        acc[w] -= math.log(prod[w])


@_raw
def _lanes_entropy(P, Q, Y, mu_out, zinv, kl, b0, b1, n, acc, prod, h_out):
    """``H = log Pr(S = k) + sum_i softplus(y_i) - mu_i y_i`` per lane (trivial and dummy lanes are left
    alone: their ``h_out`` stays 0)."""
    _lanes_log_terms(P, Q, Y, mu_out, True, b0, b1, n, acc, prod)
    for w in range(_LANES):
        b = b0 + w
        if b < b1 and kl[w] > 0 and zinv[w] > 0.0:
            h_out[b] = -math.log(zinv[w]) + acc[w]


@_jit
def _lanes_workspace(n, K, S, want_cov):
    """A :data:`LanesWorkspace` for one thread (``S`` samples per row)."""
    L = _LANES
    F = (K + 2) * L
    return LanesWorkspace(
        np.empty((n, L)),  # P
        np.empty((n, L)),  # Q
        np.empty((n, L)),  # Y
        np.empty((n, L)),  # Wt
        np.ones((n, L)),  # ONE
        np.empty((n, F)),  # Pt
        np.empty((n, F)),  # Qt
        np.empty((n if want_cov else 1, F)),  # Ht
        np.empty((n + 1, F)),  # A
        np.empty((n + 1 if want_cov else 1, F)),  # G
        np.empty((2, F)),  # R
        np.empty((2, F)),  # H
        np.empty((S, L), np.int64),  # need
        np.empty(L, np.int64),  # kl
        np.empty(L, np.int64),  # ml
        np.empty(L),  # zinv
        np.empty(L),  # gbar
        np.empty(L),  # dd
        np.empty(L),  # ddg
        np.empty(n, np.int64),  # idx
        np.empty(n),  # x
        np.empty(n),  # p
        np.empty(n),  # q
        np.empty((n, L)),  # E
        np.empty((8, L)),  # st
    )


@_jit
def _lanes_rows(theta, k, K, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, mode, T, b0, b1):
    """Rows ``b0 .. b1-1`` in groups of ``LANES`` (one work space for all the groups)."""
    ws = _lanes_workspace(theta.shape[1], K, u.shape[0], want_cov)
    for g0 in range(b0, b1, _LANES):
        _lanes_group(
            theta, k, K, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, mode, T, g0,
            min(g0 + _LANES, b1), ws,
        )


@_jit
def _lanes_log_z_rows(theta, k, K, out, b0, b1):
    """``log Z`` of rows ``b0 .. b1-1``, ``LANES`` at a time: the tilt and the forward table only, then
    ``log Z = log Pr(S = k) + sum_i softplus(y_i) - c k`` (``y = theta + c`` the tilted logits). A row whose
    ``Pr(S = k)`` is not a positive finite number gets NaN (the caller recomputes it)."""
    n = theta.shape[1]
    ws = _lanes_workspace(n, K, 0, False)
    u = np.empty((0, 1, 1))
    z = np.empty((0, 1, 1), np.int64)
    one = np.empty((1, 1))
    h = np.empty(1)
    ok = np.ones(theta.shape[0], np.bool_)
    T = np.empty((3, 1, 1))
    for g0 in range(b0, b1, _LANES):
        g1 = min(g0 + _LANES, b1)
        _lanes_group(theta, k, K, False, False, False, theta, u, z, one, one, h, ok, 0, T, g0, g1, ws)
        _lanes_log_terms(ws.P, ws.Q, ws.Y, one, False, g0, g1, n, ws.st[5], ws.st[6])
        for w in range(g1 - g0):
            b = g0 + w
            if ws.kl[w] > 0:
                zinv = ws.zinv[w]
                out[b] = -math.log(zinv) + ws.st[5][w] - ws.st[0][w] * ws.kl[w] if zinv > 0.0 else np.nan
            elif k[b] == 0:
                out[b] = 0.0
            else:  # k = m: every free item
                tot = 0.0
                for i in range(n):
                    if theta[b, i] > -np.inf:
                        tot += theta[b, i]
                out[b] = tot
