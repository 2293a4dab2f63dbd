"""Steps 3-5, the backward sweep: marginals, entropy, covariance-vector products and samples of one row.

``R_i[u] = Pr(S_{i..m} = k - u)`` (indexed by what the prefix must supply) is updated item by item from
``i = m`` down to ``1``, reading the forward table (:mod:`.forward`) in reverse, block by block from its
checkpoints when it was not kept whole.

* ``mu_i = p_i sum_j A_{i-1}[j] R_{i+1}[j+1] / Pr(S = k)``, a sum of non-negative terms, so every ``mu_i`` has
  full relative accuracy. A marginal whose product falls below ``2^-900`` (``p_i`` flushed, or a factor outside
  the normal range) is recomputed in log space from the item's tilted logit (:func:`_tiny_marginal`), so that
  marginals down to ``1e-300`` keep their relative accuracy rather than coming back 0.
* ``H = log Pr(S = k) + sum_i softplus(y_i) - mu_i y_i`` with the tilted logits ``y`` (:func:`_entropy_term`).
* Sampling: with ``j`` items still needed from items ``1..i``, item ``i`` is taken with probability
  ``p_i A_{i-1}[j-1] / (p_i A_{i-1}[j-1] + q_i A_{i-1}[j])`` (self-normalised, so always in ``[0, 1]`` and
  always feasible), when its uniform is below it.
* ``Cov v`` by the expectation semiring: with ``w = v - (sum p v) / (sum p)``, the suffix twin ``H`` of ``G``
  and ``(Cov v)_i = E[z_i (z.w)] - mu_i E[z.w]``, where ``E[z_i (z.w)] Pr(S = k) / p_i`` is
  ``sum_j G_{i-1}[j] R_{i+1}[j+1] + w_i A_{i-1}[j] R_{i+1}[j+1] + A_{i-1}[j] H_{i+1}[j+1]``.

A backward vector before item ``i`` is valid on the band of ``A_{i-1}`` and holds an explicit 0 at ``lo - 1``
(when ``lo > 0``) and at ``k + 1``.
"""

from __future__ import annotations

import math

import numpy as np

from .common import _LN2, _RESCALE, _TINY, _U, _U1, _flush, _flush_signed, _raw
from .forward import _dense_width, _forward, _rescale, _restore
from .tilt import _setup


@_raw
def _bstep(R, pr, cr, p, q, lo, hi):
    """``R[cr, u] = q R[pr, u] + p R[pr, u+1]`` on ``[lo, hi]`` (backward recursion, reversed index)."""
    for u in range(_U(lo), _U(hi + 1)):
        R[cr, u] = _flush(q * R[pr, u] + p * R[pr, u + _U1])
    if lo > 0:
        R[cr, lo - 1] = 0.0


@_raw
def _hstep(H, R, pr, cr, p, q, w, lo, hi):
    """``H[cr, u] = q H[pr, u] + p (H[pr, u+1] + w R[pr, u+1])`` (expectation semiring, backward)."""
    pw = p * w
    for u in range(_U(lo), _U(hi + 1)):
        H[cr, u] = _flush_signed(q * H[pr, u] + p * H[pr, u + _U1] + pw * R[pr, u + _U1])
    if lo > 0:
        H[cr, lo - 1] = 0.0


@_raw
def _entropy_term(y, mu):
    """``softplus(y) - mu y``: item ``i``'s share of ``H = log Pr(S = k) + sum_i softplus(y_i) - mu_i y_i``.

    That is ``H = log Z - theta . mu`` written with the tilted logits ``y = theta + c`` (exact, centred):
    on the raw logits both terms grow with the logits' offset and their difference loses
    ``eps * k * |offset|``; here the error is ``eps * sum_i |y_i|`` whatever the offset.
    """
    return max(y, 0.0) + math.log1p(math.exp(-abs(y))) - mu * y


@_raw
def _tiny_marginal(y, d, log_scale):
    """``sigmoid(y) d exp(log_scale)`` in log space: the marginal of an item whose tilted probability
    ``sigmoid(y)`` was flushed (or whose product with ``d / Pr(S = k)`` leaves the normal range).

    ``y`` is the item's tilted logit, kept exactly, so the result keeps full relative accuracy down to the
    smallest normal number.
    """
    if not d > 0.0:
        return 0.0
    log_p = -(max(-y, 0.0) + math.log1p(math.exp(-abs(y))))
    return math.exp(log_p + math.log(d) + log_scale)


@_raw
def _row_sweep(th, k, s, want_mu, want_cov, want_h, v, u, b, z, mu_out, cov_out, h_out, ws, dense):
    """Marginals, covariance-vector product, entropy and samples of one row (everything but ``log Z``).

    ``u [S, B, n]`` uniforms (``S`` may be 0); writes ``z[:, b]``, ``mu_out`` and ``cov_out`` (this row of
    the outputs, zero-filled by the caller) and ``h_out[b]`` (``want_h`` needs ``want_mu``). ``ws`` is the
    calling thread's work space (see :data:`.rows.RowWorkspace`). Returns False when the row could not be computed
    (the caller then falls back to the tree engine).
    """
    idx, need, ea, ce, x, p, q, w = ws.idx, ws.need, ws.ea, ws.ce, ws.x, ws.p, ws.q, ws.w
    ta, tg, ca, cg, rr, hh = ws.ta, ws.tg, ws.ca, ws.cg, ws.rr, ws.hh
    S = u.shape[0]
    m, _ = _setup(th, k, idx, x, p, q)
    if k == 0:
        return True
    if k == m:  # every free item is selected, Cov = 0
        for i in range(m):
            if want_mu:
                mu_out[idx[i]] = 1.0
            for si in range(S):
                z[si, b, idx[i]] = 1
        return True
    with_g = want_cov
    if with_g:
        _centre(v, idx, p, w, m)
    dn = _dense_width(k) if dense else 0
    L = max(k, dn) + 2
    nb = (m + s) // s  # blocks of table rows 0..m
    _forward(ta, tg, ea, ca, cg, ce, with_g, s, nb, p, q, w, m, m, k, dn)
    last = m - (nb - 1) * s
    zk = ta[last, k]
    if not (zk > 0.0 and zk < np.inf):
        return False
    gbar = tg[last, k] / zk if with_g else 0.0  # E[z . w]
    # backward vectors R_{m+1} = e_k, H_{m+1} = 0 (row 0 of rr, hh)
    for t in range(L):
        rr[0, t] = 0.0
        rr[1, t] = 0.0
        hh[0, t] = 0.0
        hh[1, t] = 0.0
    rr[0, k] = 1.0
    for si in range(S):
        need[si] = k
    _sweep_back(
        ta, tg, ea, ca, cg, ce, rr, hh, need, with_g, want_mu, s, nb, idx, x, p, q, w, m, m, k, dn,
        zk, ea[last], 0, gbar, u, b, u[:0, 0, 0], z, mu_out, cov_out,
    )  # fmt: skip
    if want_h:
        h_out[b] = _entropy(x, idx, mu_out, m, math.log(zk) + ea[last] * _LN2)
    return True


@_raw
def _centre(v, idx, p, w, m):
    """``w_i = v_i - (sum_j p_j v_j) / (sum_j p_j)`` on the ``m`` free items (the centring of ``Cov v``)."""
    sp = 0.0
    spv = 0.0
    for i in range(m):
        sp += p[i]
        spv += p[i] * v[idx[i]]
    vbar = spv / sp
    for i in range(m):
        w[i] = v[idx[i]] - vbar


@_raw
def _entropy(x, idx, mu_out, m, log_pk):
    """``H = log Pr(S = k) + sum_i softplus(y_i) - mu_i y_i`` from ``log_pk = log Pr(S = k)`` (tilted)."""
    h = log_pk
    for i in range(m):
        h += _entropy_term(x[i], mu_out[idx[i]])
    return h


@_raw
def _sweep_back(
    ta, tg, ea, ca, cg, ce, rr, hh, need, with_g, want_mu, s, nb, idx, x, p, q, w, m, mb, k, dn,
    zk, ez, er, gbar, u, b, u_first, z, mu_out, cov_out,
):  # fmt: skip
    """The backward sweep over ``m`` items (of a row of ``mb``), from the end vectors in row 0 of ``rr``
    (``R``) and ``hh`` (``H``), their power-of-two exponent ``er``, and ``need`` (items still to draw, per
    sample), with the forward state of :func:`.forward._forward` (last block in ``ta``, checkpoints).

    ``zk 2^ez = Pr(S = k)`` (tilted), ``gbar = E[z . w]``. Draws item ``i`` with the uniform
    ``u[si, b, idx[i - 1]]``, except the first item swept (item ``m``) with ``u_first[si]`` when ``u_first``
    is not empty. Writes ``z[:, b]``, ``mu_out`` and ``cov_out`` at the items' columns ``idx``.
    """
    S = u.shape[0]
    inv_zk = 1.0 / zk
    log_zk = math.log(zk)
    want_r = want_mu or with_g
    ra = 0
    for blk in range(nb - 1, -1, -1):
        r0 = blk * s
        r1 = min(r0 + s - 1, m)
        if blk < nb - 1:
            _restore(ta, tg, ea, ca, cg, ce, with_g, blk, s, p, q, w, m, mb, k, dn)
        for i in range(min(r1 + 1, m), r0, -1):
            row = i - 1 - r0  # A_{i-1}
            pi = p[i - 1]
            qi = q[i - 1]
            if dn > 0:  # dense: R on [0, dn - 1], its entry dn stays 0
                plo, phi, lo, hi = 0, dn - 1, 1, dn
            else:
                plo = max(0, k - (mb - i + 1))  # band of A_{i-1} (= band of R_i)
                phi = min(i - 1, k)
                lo = max(0, k - (mb - i))  # band of A_i (= band of R_{i+1})
                hi = min(i, k)
            item = idx[i - 1]
            # --- samples: j items still needed from items 1..i
            for si in range(S):
                j = need[si]
                if j == 0:
                    continue
                t1 = pi * ta[row, j - 1]
                t0 = qi * ta[row, j] if j <= phi else 0.0
                tot = t0 + t1
                ui = u_first[si] if i == m and u_first.shape[0] > 0 else u[si, b, item]
                if tot > 0.0:
                    take = ui * tot < t1
                else:  # numerically unreachable state: taking is always feasible
                    take = True
                if take:
                    z[si, b, item] = 1
                    need[si] = j - 1
            if not want_r:
                continue
            # --- marginal (and E[z_i z.w]) of item i
            jl = max(plo, lo - 1)
            jh = min(phi, hi - 1)
            d = 0.0
            dg = 0.0
            if with_g:
                for j in range(_U(jl), _U(jh + 1)):
                    rj = rr[ra, j + _U1]
                    d += ta[row, j] * rj
                    dg += tg[row, j] * rj + ta[row, j] * hh[ra, j + _U1]
            else:
                for j in range(_U(jl), _U(jh + 1)):
                    d += ta[row, j] * rr[ra, j + _U1]
            ex = ea[row] + er - ez
            f = pi * (inv_zk if ex == 0 else math.ldexp(inv_zk, ex))
            mui = min(d * f, 1.0)
            if mui < _TINY:
                mui = _tiny_marginal(x[i - 1], d, ex * _LN2 - log_zk)
                f = mui / d if d > 0.0 else 0.0
            if want_mu:
                mu_out[item] = mui
            if with_g:
                cov_out[item] = (dg + w[i - 1] * d) * f - mui * gbar
            # --- R_i (and H_i) from R_{i+1}
            if i > 1:
                _bstep(rr, ra, 1 - ra, pi, qi, plo, phi)
                if with_g:
                    _hstep(hh, rr, ra, 1 - ra, pi, qi, w[i - 1], plo, phi)
                ra = 1 - ra
                if i % _RESCALE == 0:
                    er += _rescale(rr, hh, ra, with_g, plo, phi)
