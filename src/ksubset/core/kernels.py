"""Compiled CPU engine (numba): a sequential forward-backward over the items, rows in parallel.

Same interface as :mod:`.tree` and :mod:`.reference` (the canonical problem of :mod:`._problem`:
``theta [B, n]`` finite on free items and ``-inf`` elsewhere, ``k [B]`` with ``0 <= k <= #free``). numba is
the optional extra ``ksubset[fast]``: without it :func:`available` is False and the dispatcher in
:mod:`.functions` uses the tree engine.

Algorithm (per row, rows in parallel on ``torch.get_num_threads()`` threads; all arithmetic in float64
whatever the input dtype; ``m`` free items, ``k`` to choose)
-----------------------------------------------------------------------------------------------------------
1. *Tilt* (as in :mod:`.tree`). A shift ``c`` with ``sum_i sigmoid(theta_i + c) = k`` (to 0.05 items) is
   found by safeguarded Newton in a bracket. Under the tilted Bernoullis ``p_i = sigmoid(theta_i + c)`` the
   count ``S`` has mean ``k``, so ``k`` is the mode of ``S`` and ``Pr(S = k) >= 1 / (m + 1)``; and
   ``log Z = log Pr(S = k) - c k + sum_i softplus(theta_i + c)``.
2. *Forward table* in probability space, ``A_i[j] = Pr(S_{1..i} = j)``:
   ``A_i[j] = q_i A_{i-1}[j] + p_i A_{i-1}[j-1]`` on the band ``max(0, k - (m - i)) <= j <= min(i, k)``
   (other entries cannot reach ``S = k``). Every entry is a probability and the largest entry of every row
   is at least ``Pr(S = k) / (k + 1) >= 1 / ((m + 1)(k + 1))``, so probability space needs no logarithms.
   Entries below ``2^-510`` (and ``p_i``, ``q_i`` below it) are flushed to 0: what they could contribute is
   below ``2^-400`` relative to the answer, and no product of two kept numbers is subnormal (subnormal
   arithmetic is ~100x slower on x86). A power-of-two exponent per row, checked every
   :data:`RESCALE_EVERY` rows, is a safety net; a row whose result is still not finite and positive is
   recomputed by the tree engine.
3. *Backward sweep.* ``R_i[u] = Pr(S_{i..m} = k - u)`` (indexed by what the prefix must supply), updated
   item by item from ``i = m`` down to ``1``: ``mu_i = p_i sum_j A_{i-1}[j] R_{i+1}[j+1] / Pr(S = k)``, a sum
   of non-negative terms, so every ``mu_i`` has full relative accuracy. A marginal whose product falls
   below ``2^-900`` (``p_i`` flushed, or a factor outside the normal range) is recomputed in log space from the
   item's exact tilted logit, ``mu_i = exp(log sigmoid(x_i) + log(sum_j ...) - log Pr(S = k))``, so that
   marginals down to ``1e-300`` keep their relative accuracy rather than coming back 0.
4. *Sampling* walks the same sweep: with ``j`` items still needed from items ``1..i``, item ``i`` is taken
   with probability ``p_i A_{i-1}[j-1] / (p_i A_{i-1}[j-1] + q_i A_{i-1}[j])`` (self-normalised, so always in
   ``[0, 1]`` and always feasible). The uniforms come from ``torch.rand(..., generator=...)``.
5. *Covariance-vector products* use the expectation semiring. With ``w = v - (sum p v) / (sum p)`` (``Cov``
   annihilates constants; centring only helps precision), ``G_i[j] = E[(sum_{l <= i} w_l z_l) 1{S_i = j}]``
   and its suffix twin ``H`` follow the same recurrences plus a source term, and
   ``(Cov v)_i = E[z_i (z.w)] - mu_i E[z.w]``, where ``E[z_i (z.w)] Pr(S = k) / p_i`` is
   ``sum_j G_{i-1}[j] R_{i+1}[j+1] + w_i A_{i-1}[j] R_{i+1}[j+1] + A_{i-1}[j] H_{i+1}[j+1]``.
   ``O(mk)`` per row, no ``n x n`` matrix.

Memory. The sweep needs the rows of the forward table in reverse order. A table of at most
:data:`TABLE_LIMIT` entries is kept whole; otherwise every ``s``-th row (``s ~ sqrt(n)``) is kept as a
checkpoint and each block of ``s`` rows is recomputed from its checkpoint when the sweep reaches it (one more
forward pass). Peak memory is then ``O(sqrt(n) k)`` per row in flight (16 MB at ``n = 10^6, k = 1000``).

Cost per row, in passes of ``m k`` multiply-adds: ``log_partition`` 1; ``marginals`` and
``sample_and_marginals`` 3 (4 with checkpoints); ``sample`` 1 (2); ``cov_vec`` 7 (9).

Code generation (what made the difference, measured): inner loops use unsigned indices (numba's
negative-index wraparound otherwise blocks LLVM's vectoriser); per-row functions are compiled without
numba's reference counting (``_nrt=False``: its atomic increments cost more than a 20-item row);
``error_model="numpy"`` (no zero-division checks in vectorisable loops); for ``K <= DENSE_MAX_K`` every
count up to a multiple of 16 is computed (trip counts the vector loops accept, see ``_band``); and for
``K <= LANES_MAX_K`` with many rows, :data:`LANES` rows are processed side by side, the innermost loop
running over rows (``_lanes_group``). Rows are spread over ``torch.get_num_threads()`` Python threads (the
kernels release the GIL), claimed chunk by chunk so that a busy machine costs nothing extra.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from .numerics import rand

try:  # numba is optional (the ``fast`` extra)
    import numba
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

__all__ = [
    "available",
    "supports",
    "log_partition",
    "marginals",
    "cov_vec",
    "entropy",
    "uniforms",
    "sample",
    "sample_given",
    "sample_and_marginals",
    "sample_and_marginals_given",
    "FALLBACK_POLICY",
    "KernelFallbackError",
    "KernelFallbackWarning",
    "fallback_count",
    "fallback_policy",
]

#: Largest forward table (entries, float64, per row in flight) kept whole; larger rows use checkpoints.
TABLE_LIMIT = 1 << 21

#: A table row is checked for rescaling every this many items (a safety net; see the module docstring).
RESCALE_EVERY = 32

#: Up to this K the per-row kernel computes every count up to a multiple of 16 (see ``_band``).
DENSE_MAX_K = 63

#: Rows processed side by side by the lanes kernel (used when K <= LANES_MAX_K and the table is small).
LANES = 8
LANES_MAX_K = 16
LANES_TABLE_LIMIT = 1 << 20

#: Below this much work (``B n (K + 1)``) the kernels run on one thread (thread start-up costs more).
PARALLEL_MIN_WORK = 1 << 17

#: Row chunks per thread (claimed dynamically; see ``_run_rows``).
CHUNKS_PER_THREAD = 4


#: What happens when a row cannot be computed by the kernel and is recomputed by the tree engine (the result
#: stays exact): ``"warn"`` (a :class:`KernelFallbackWarning`), ``"raise"`` (a :class:`KernelFallbackError`
#: instead of the fallback) or ``"silent"``. Every fallback is counted (:func:`fallback_count`).
FALLBACK_POLICY = "warn"
_POLICIES = ("warn", "raise", "silent")


class KernelFallbackError(RuntimeError):
    """A row could not be computed by the kernel and :data:`FALLBACK_POLICY` is ``"raise"``."""


class KernelFallbackWarning(RuntimeWarning):
    """A row could not be computed by the kernel and was recomputed by the tree engine."""


_fallbacks = 0
_fallback_lock = threading.Lock()


def fallback_count() -> int:
    """How many rows have been recomputed by the tree engine (or refused, under ``"raise"``) so far."""
    return _fallbacks


@contextlib.contextmanager
def fallback_policy(policy: str) -> Iterator[None]:
    """Run the block with :data:`FALLBACK_POLICY` set to ``policy`` (process-wide; restored on exit)."""
    global FALLBACK_POLICY
    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {_POLICIES}, got {policy!r}")
    before, FALLBACK_POLICY = FALLBACK_POLICY, policy
    try:
        yield
    finally:
        FALLBACK_POLICY = before


def _on_fallback(what: str, rows: int) -> None:
    """Count ``rows`` fallen-back rows of ``what`` and apply :data:`FALLBACK_POLICY`."""
    global _fallbacks
    with _fallback_lock:
        _fallbacks += rows
    policy = FALLBACK_POLICY
    if policy not in _POLICIES:
        raise ValueError(f"kernels.FALLBACK_POLICY must be one of {_POLICIES}, got {policy!r}")
    msg = f"the kernels engine could not compute {what} for {rows} row(s); they are recomputed by the tree engine"
    if policy == "raise":
        raise KernelFallbackError(msg)
    if policy == "warn":
        warnings.warn(msg, KernelFallbackWarning, stacklevel=3)


def available() -> bool:
    """Whether numba is importable (the engine works only then)."""
    return numba is not None


def supports(theta: Tensor) -> bool:
    """Whether this engine handles ``theta``: a CPU float32/float64 tensor, with numba installed."""
    return numba is not None and theta.device.type == "cpu" and theta.dtype in (torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------------------
# compiled kernels

if numba is not None:
    _FM = {"reassoc", "contract"}  # lets LLVM vectorise reductions; no assumptions about inf/nan
    _jit = numba.njit(cache=True, fastmath=_FM, nogil=True, error_model="numpy")
    # Functions that allocate nothing run without numba's reference counting (NRT): with it, every call
    # increfs/decrefs each array argument with atomic instructions, which costs more than the work of a
    # 20-item row.
    _raw = numba.njit(cache=True, fastmath=_FM, nogil=True, error_model="numpy", _nrt=False)
    _U = numba.uint64
    _U1 = np.uint64(1)
    _U8 = np.uint64(8)
    _FLUSH = 2.0**-510  # kept entries >= _FLUSH, so products of two kept entries are normal numbers
    _LO_SCALE = 2.0**-200
    _HI_SCALE = 2.0**200
    _RESCALE = RESCALE_EVERY
    _SPREAD = 1200.0  # logit spread up to which the tilt takes one exp per item
    _TILT_TOL = 0.05
    _MAX_NEWTON = 200
    _LANES = LANES
    _TINY = 2.0**-900  # a marginal computed below this may have lost factors to flushing or subnormals
    _LN2 = math.log(2.0)

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
    def _flush(v):
        return v if v >= _FLUSH else 0.0

    @_raw
    def _flush_signed(v):
        return v if abs(v) >= _FLUSH else 0.0

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

    # Band steps. Vectors have length k + 2. A forward vector (A, G) after item i is valid on the band
    # [lo_i, hi_i] = [max(0, k - (m - i)), min(i, k)] and holds an explicit 0 at hi_i + 1; a backward vector
    # (R, H) before item i is valid on the band of A_{i-1} and holds an explicit 0 at lo - 1 (when lo > 0)
    # and at k + 1. With these guard zeros the recurrences need no edge cases. Vectors are rows of 2-d
    # arrays addressed by row number (no array views inside loops: each view costs reference counting).

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
    def _fwd_rows(ta, tg, ea, with_g, r0, r1, p, q, w, m, k, dn):
        """Forward rows ``r0 + 1 .. r1`` into ``ta[r - r0]`` from row ``r0`` in ``ta[0]`` (and ``tg``)."""
        for r in range(r0 + 1, r1 + 1):
            pi = p[r - 1]
            qi = q[r - 1]
            lo, hi = _band(r, m, k, dn)
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
    def _forward(ta, tg, ea, ca, cg, ce, with_g, s, nb, p, q, w, m, k, dn):
        """The whole forward pass; keeps checkpoints (when ``nb > 1``) and leaves the last block in ``ta``."""
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
                lo, hi = _band(r0, m, k, dn)
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
            _fwd_rows(ta, tg, ea, with_g, r0, r1, p, q, w, m, k, dn)

    @_raw
    def _restore(ta, tg, ea, ca, cg, ce, with_g, blk, s, p, q, w, m, k, dn):
        """Recompute block ``blk`` of the forward table from its checkpoint."""
        r0 = blk * s
        r1 = min(r0 + s - 1, m)
        for t in range(max(k, dn) + 2):
            ta[0, t] = ca[blk, t]
        ea[0] = ce[blk]
        if with_g:
            for t in range(max(k, dn) + 2):
                tg[0, t] = cg[blk, t]
        _fwd_rows(ta, tg, ea, with_g, r0, r1, p, q, w, m, k, dn)

    @_raw
    def _row_sweep(th, k, s, want_mu, want_cov, want_h, v, u, b, z, mu_out, cov_out, h_out, ws, dense):
        """Marginals, covariance-vector product, entropy and samples of one row (everything but ``log Z``).

        ``u [S, B, n]`` uniforms (``S`` may be 0); writes ``z[:, b]``, ``mu_out`` and ``cov_out`` (this row of
        the outputs, zero-filled by the caller) and ``h_out[b]`` (``want_h`` needs ``want_mu``). ``ws`` is the
        calling thread's work space (see :func:`_workspace`). Returns False when the row could not be computed
        (the caller then falls back to the tree engine).
        """
        idx, need, ea, ce, x, p, q, w, ta, tg, ca, cg, rr, hh = ws
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
            sp = 0.0
            spv = 0.0
            for i in range(m):
                sp += p[i]
                spv += p[i] * v[idx[i]]
            vbar = spv / sp
            for i in range(m):
                w[i] = v[idx[i]] - vbar
        dn = (k + 16) // 16 * 16 if dense else 0  # dense width: a multiple of 16 >= k + 1
        L = max(k, dn) + 2
        nb = (m + s) // s  # blocks of table rows 0..m
        _forward(ta, tg, ea, ca, cg, ce, with_g, s, nb, p, q, w, m, k, dn)
        last = m - (nb - 1) * s
        zk = ta[last, k]
        if not (zk > 0.0 and zk < np.inf):
            return False
        ez = ea[last]
        inv_zk = 1.0 / zk
        log_zk = math.log(zk)
        gbar = tg[last, k] * inv_zk if with_g else 0.0  # E[z . w]
        want_r = want_mu or want_cov
        # backward vectors R (and H): rows ra / 1 - ra of rr (hh); R_{m+1} = e_k, H_{m+1} = 0
        for t in range(L):
            rr[0, t] = 0.0
            rr[1, t] = 0.0
            hh[0, t] = 0.0
            hh[1, t] = 0.0
        rr[0, k] = 1.0
        ra = 0
        er = 0
        for si in range(S):
            need[si] = k
        for blk in range(nb - 1, -1, -1):
            r0 = blk * s
            r1 = min(r0 + s - 1, m)
            if blk < nb - 1:
                _restore(ta, tg, ea, ca, cg, ce, with_g, blk, s, p, q, w, m, k, dn)
            for i in range(min(r1 + 1, m), r0, -1):
                row = i - 1 - r0  # A_{i-1}
                pi = p[i - 1]
                qi = q[i - 1]
                if dn > 0:  # dense: R on [0, dn - 1], its entry dn stays 0
                    plo, phi, lo, hi = 0, dn - 1, 1, dn
                else:
                    plo = max(0, k - (m - i + 1))  # band of A_{i-1} (= band of R_i)
                    phi = min(i - 1, k)
                    lo = max(0, k - (m - i))  # band of A_i (= band of R_{i+1})
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
                    if tot > 0.0:
                        take = u[si, b, item] * tot < t1
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
        if want_h:
            h = log_zk + ez * _LN2  # log Pr(S = k)
            for i in range(m):
                h += _entropy_term(x[i], mu_out[idx[i]])
            h_out[b] = h
        return True

    @_jit
    def _workspace(n, K, S, s, want_cov, dense):
        """Work space of one thread, sized for any row of the batch (table rows have stride ``L``)."""
        rows = min(s, n + 1)
        nb = (n + s) // s
        ncp = nb if nb > 1 else 1
        L = max(K, (K + 16) // 16 * 16 if dense else 0) + 2
        return (
            np.empty(n, np.int64),  # idx
            np.empty(S, np.int64),  # need
            np.empty(rows, np.int64),  # ea
            np.empty(ncp, np.int64),  # ce
            np.empty(n),  # x
            np.empty(n),  # p
            np.empty(n),  # q
            np.empty(n if want_cov else 1),  # w
            np.empty((rows, L)),  # ta
            np.empty((rows if want_cov else 1, L)),  # tg
            np.empty((ncp, L)),  # ca
            np.empty((ncp if want_cov else 1, L)),  # cg
            np.empty((2, L)),  # rr
            np.empty((2, L)),  # hh
        )

    @_jit
    def _sweep_rows(theta, k, K, s, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, dense, b0, b1):
        ws = _workspace(theta.shape[1], K, u.shape[0], s, want_cov, dense)
        for b in range(b0, b1):
            ok[b] = _row_sweep(
                theta[b], k[b], s, want_mu, want_cov, want_h, v[b], u, b, z, mu_out[b], cov_out[b], h_out, ws, dense
            )

    # ------------------------------------------------------------------------------------------------------
    # Lanes: _LANES rows side by side, the innermost (vectorised) index running over rows. For many short
    # rows with small K, where the per-row kernel's loops over j are too short to vectorise well. Every row
    # of a group walks all n items (an unavailable item is an identity step, p = 0, q = 1) and all counts
    # j <= min(i, K) (no lower band); tables are kept whole (no checkpoints) and there is no rescaling (each
    # row's maximum stays >= Pr(S = k) / (k + 1), see the module docstring; a row whose Pr(S = k) is not a
    # positive finite number is reported as failed and recomputed by the fallback).

    @_raw
    def _lanes_setup(theta, k, v, b0, b1, with_g, P, Q, Y, Wt, kl, ml, idx, x, p, q):
        """Tilted ``p``/``q``, tilted logits ``Y`` (and centred ``v``) of rows ``b0..b1-1`` into lanes.

        Lanes past ``b1`` and trivial rows (``k = 0`` or ``k = m``) are dummies: p = 0, q = 1, k = 0.
        """
        n = theta.shape[1]
        for w in range(_LANES):
            for i in range(n):
                P[i, w] = 0.0
                Q[i, w] = 1.0
                Wt[i, w] = 0.0
                Y[i, w] = -np.inf
            kl[w] = 0
            ml[w] = 0
            b = b0 + w
            if b >= b1:
                continue
            kb = k[b]
            m, _ = _setup(theta[b], kb, idx, x, p, q)
            ml[w] = m
            if kb == 0 or kb == m:
                continue
            kl[w] = kb
            for t in range(m):
                P[idx[t], w] = p[t]
                Y[idx[t], w] = x[t]
                Q[idx[t], w] = q[t]
            if with_g:
                sp = 0.0
                spv = 0.0
                for t in range(m):
                    sp += p[t]
                    spv += p[t] * v[b, idx[t]]
                vbar = spv / sp
                for t in range(m):
                    Wt[idx[t], w] = v[b, idx[t]] - vbar

    @_raw
    def _tile(X, Y, Xt, n, K):
        """``Xt[i, j * 8 + w] = X[i, w] Y[i, w]`` for ``j <= K + 1``: per-lane coefficients laid out like a
        table row.

        The eight values are read into locals before the eight stores, so LLVM's SLP vectoriser can turn each
        group into one vector load and store (with interleaved loads and stores it must assume aliasing).
        """
        for i in range(n):
            x0, x1, x2, x3 = X[i, 0] * Y[i, 0], X[i, 1] * Y[i, 1], X[i, 2] * Y[i, 2], X[i, 3] * Y[i, 3]
            x4, x5, x6, x7 = X[i, 4] * Y[i, 4], X[i, 5] * Y[i, 5], X[i, 6] * Y[i, 6], X[i, 7] * Y[i, 7]
            for j in range(K + 2):
                f = j * 8
                Xt[i, f], Xt[i, f + 1], Xt[i, f + 2], Xt[i, f + 3] = x0, x1, x2, x3
                Xt[i, f + 4], Xt[i, f + 5], Xt[i, f + 6], Xt[i, f + 7] = x4, x5, x6, x7

    @_raw
    def _lanes_group(theta, k, K, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, b0, b1, ws):
        """Rows ``b0 .. b1-1`` (at most 8) of the sweep, side by side.

        Tables are ``[item, j * 8 + lane]``: a table row is one flat vector, so each recursion step is one
        long vectorisable loop over ``f = j * 8 + lane`` (``f - 8`` is count ``j - 1`` of the same lane), with
        the per-lane coefficients tiled to the same layout (``_tile``). Dot products over ``j`` keep one
        accumulator per lane in locals.
        """
        P, Q, Y, Wt, ONE, Pt, Qt, Ht, A, G, R, H, need, kl, ml, zinv, gbar, dd, ddg, idx, x, p, q = ws
        n = theta.shape[1]
        S = u.shape[0]
        with_g = want_cov
        F = (K + 2) * 8
        _lanes_setup(theta, k, v, b0, b1, with_g, P, Q, Y, Wt, kl, ml, idx, x, p, q)
        _tile(P, ONE, Pt, n, K)
        _tile(Q, ONE, Qt, n, K)
        if with_g:
            _tile(P, Wt, Ht, n, K)  # the source term's coefficient p_i w_i
        # forward tables
        for f in range(F):
            A[0, f] = 0.0
            G[0, f] = 0.0
        for w in range(8):
            A[0, w] = 1.0
        for i in range(1, n + 1):
            it = i - 1
            hw = (min(i, K) + 1) * 8
            for f in range(_U(0), _U(8)):
                A[i, f] = _flush(Qt[it, f] * A[it, f])
            for f in range(_U(8), _U(hw)):
                A[i, f] = _flush(Qt[it, f] * A[it, f] + Pt[it, f] * A[it, f - _U8])
            for f in range(_U(hw), _U(hw + 8)):
                A[i, f] = 0.0
            if with_g:
                for f in range(_U(0), _U(8)):
                    G[i, f] = _flush_signed(Qt[it, f] * G[it, f])
                for f in range(_U(8), _U(hw)):
                    G[i, f] = _flush_signed(
                        Qt[it, f] * G[it, f] + Pt[it, f] * G[it, f - _U8] + Ht[it, f] * A[it, f - _U8]
                    )
                for f in range(_U(hw), _U(hw + 8)):
                    G[i, f] = 0.0
        for w in range(8):
            zk = A[n, kl[w] * 8 + w]
            zinv[w] = 1.0 / zk if (zk > 0.0 and zk < np.inf) else 0.0
            gbar[w] = G[n, kl[w] * 8 + w] * zinv[w] if with_g else 0.0
            if b0 + w < b1 and zinv[w] == 0.0:
                ok[b0 + w] = False
        # backward vectors R (and H), ping-pong rows ra / 1 - ra; R_{n+1}[u] = [u == k]; column K+1 stays 0
        for r in range(2):
            for f in range(F):
                R[r, f] = 0.0
                H[r, f] = 0.0
        for w in range(8):
            R[0, kl[w] * 8 + w] = 1.0
            for si in range(S):
                need[si, w] = kl[w]
        ra = 0
        for i in range(n, 0, -1):
            it = i - 1  # the item; its A_{i-1} is table row it
            # --- samples (per lane; j items still needed from items 1..i)
            if S > 0:
                for w in range(8):
                    pw = P[it, w]
                    if pw == 0.0:
                        continue
                    for si in range(S):
                        j = need[si, w]
                        if j == 0:
                            continue
                        t1 = pw * A[it, (j - 1) * 8 + w]
                        tot = t1 + Q[it, w] * A[it, j * 8 + w]
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
            d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = 0.0
            for j in range(jh + 1):
                f = j * 8
                g = f + 8
                d0 += A[it, f] * R[ra, g]
                d1 += A[it, f + 1] * R[ra, g + 1]
                d2 += A[it, f + 2] * R[ra, g + 2]
                d3 += A[it, f + 3] * R[ra, g + 3]
                d4 += A[it, f + 4] * R[ra, g + 4]
                d5 += A[it, f + 5] * R[ra, g + 5]
                d6 += A[it, f + 6] * R[ra, g + 6]
                d7 += A[it, f + 7] * R[ra, g + 7]
            dd[0], dd[1], dd[2], dd[3], dd[4], dd[5], dd[6], dd[7] = d0, d1, d2, d3, d4, d5, d6, d7
            if with_g:
                d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = 0.0
                for j in range(jh + 1):
                    f = j * 8
                    g = f + 8
                    d0 += G[it, f] * R[ra, g] + A[it, f] * H[ra, g]
                    d1 += G[it, f + 1] * R[ra, g + 1] + A[it, f + 1] * H[ra, g + 1]
                    d2 += G[it, f + 2] * R[ra, g + 2] + A[it, f + 2] * H[ra, g + 2]
                    d3 += G[it, f + 3] * R[ra, g + 3] + A[it, f + 3] * H[ra, g + 3]
                    d4 += G[it, f + 4] * R[ra, g + 4] + A[it, f + 4] * H[ra, g + 4]
                    d5 += G[it, f + 5] * R[ra, g + 5] + A[it, f + 5] * H[ra, g + 5]
                    d6 += G[it, f + 6] * R[ra, g + 6] + A[it, f + 6] * H[ra, g + 6]
                    d7 += G[it, f + 7] * R[ra, g + 7] + A[it, f + 7] * H[ra, g + 7]
                ddg[0], ddg[1], ddg[2], ddg[3], ddg[4], ddg[5], ddg[6], ddg[7] = (
                    d0,
                    d1,
                    d2,
                    d3,
                    d4,
                    d5,
                    d6,
                    d7,
                )
            for w in range(8):
                if b0 + w < b1 and kl[w] > 0:
                    fw = P[it, w] * zinv[w]
                    mui = min(dd[w] * fw, 1.0)
                    if mui < _TINY and Y[it, w] > -np.inf:  # (Y = -inf: unavailable item or dummy lane)
                        mui = _tiny_marginal(Y[it, w], dd[w], math.log(zinv[w]))
                        fw = mui / dd[w] if dd[w] > 0.0 else 0.0
                    if want_mu:
                        mu_out[b0 + w, it] = mui
                    if with_g:
                        cov_out[b0 + w, it] = (ddg[w] + Wt[it, w] * dd[w]) * fw - mui * gbar[w]
            # --- R_i (and H_i) from R_{i+1}, counts u <= K
            rb = 1 - ra
            for f in range(_U(0), _U((K + 1) * 8)):
                R[rb, f] = _flush(Qt[it, f] * R[ra, f] + Pt[it, f] * R[ra, f + _U8])
            if with_g:
                for f in range(_U(0), _U((K + 1) * 8)):
                    H[rb, f] = _flush_signed(
                        Qt[it, f] * H[ra, f] + Pt[it, f] * H[ra, f + _U8] + Ht[it, f] * R[ra, f + _U8]
                    )
            ra = rb
        # trivial rows: k = m selects every free item
        for w in range(8):
            b = b0 + w
            if b < b1 and k[b] > 0 and k[b] == ml[w]:
                for i in range(n):
                    if theta[b, i] > -np.inf:
                        if want_mu:
                            mu_out[b, i] = 1.0
                        for si in range(S):
                            z[si, b, i] = 1
        if want_h:  # H = log Pr(S = k) + sum_i softplus(y_i) - mu_i y_i (see _entropy_term); trivial rows: 0
            for w in range(8):
                b = b0 + w
                if b < b1 and kl[w] > 0 and zinv[w] > 0.0:
                    h = -math.log(zinv[w])
                    for i in range(n):
                        if Y[i, w] > -np.inf:
                            h += _entropy_term(Y[i, w], mu_out[b, i])
                    h_out[b] = h

    @_jit
    def _lanes_rows(theta, k, K, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, b0, b1):
        n = theta.shape[1]
        S = u.shape[0]
        F = (K + 2) * 8
        ws = (
            np.empty((n, 8)),  # P
            np.empty((n, 8)),  # Q
            np.empty((n, 8)),  # Y (tilted logits)
            np.empty((n, 8)),  # Wt (centred v)
            np.ones((n, 8)),  # ONE
            np.empty((n, F)),  # Pt
            np.empty((n, F)),  # Qt
            np.empty((n if want_cov else 1, F)),  # Ht (p w, tiled)
            np.empty((n + 1, F)),  # A
            np.empty((n + 1 if want_cov else 1, F)),  # G
            np.empty((2, F)),  # R
            np.empty((2, F)),  # H
            np.empty((S, 8), np.int64),  # need
            np.empty(8, np.int64),  # kl
            np.empty(8, np.int64),  # ml
            np.empty(8),  # zinv
            np.empty(8),  # gbar
            np.empty(8),  # dd
            np.empty(8),  # ddg
            np.empty(n, np.int64),  # idx
            np.empty(n),  # x
            np.empty(n),  # p
            np.empty(n),  # q
        )
        for g0 in range(b0, b1, 8):
            _lanes_group(
                theta, k, K, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, g0, min(g0 + 8, b1), ws
            )

    @_jit
    def _log_z_rows(theta, k, K, out, dense, b0, b1):
        n = theta.shape[1]
        idx = np.empty(n, np.int64)
        x = np.empty(n)
        p = np.empty(n)
        q = np.empty(n)
        a = np.empty((2, max(K, (K + 16) // 16 * 16 if dense else 0) + 2))
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
            dn = (kb + 16) // 16 * 16 if dense else 0
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

# ----------------------------------------------------------------------------------------------------------
# engine interface


def _require() -> None:
    if numba is None:
        raise RuntimeError("the kernels engine needs numba: pip install 'ksubset[fast]'")


def _as_f64(x: Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).contiguous().numpy()


def _as_i64(k: Tensor) -> np.ndarray:
    return k.detach().to(torch.int64).contiguous().numpy()


_pool = None
_pool_lock = threading.Lock()


def _threads(B: int, n: int, K: int) -> int:
    """How many threads to split the rows over (1: the calling thread alone)."""
    if B < 2 or B * n * (K + 1) < PARALLEL_MIN_WORK:
        return 1
    return max(1, min(B, torch.get_num_threads()))


def _use_lanes(B: int, n: int, K: int) -> bool:
    return B >= 2 and 0 < K <= LANES_MAX_K and (n + 1) * (K + 2) * LANES <= LANES_TABLE_LIMIT


def _run_rows(fn, B: int, n: int, K: int, *args, align: int = 1) -> None:
    """``fn(*args, b0, b1)`` over row ranges, on up to ``torch.get_num_threads()`` threads.

    The kernels release the GIL. Rows are cut into a few chunks per thread that the calling thread and the
    pool's threads claim one at a time, so a busy machine (a pool thread that is not scheduled soon) slows
    nothing down: the calling thread then simply does more of the chunks itself.
    """
    T = _threads(B, n, K)
    if T == 1:
        if B:
            fn(*args, 0, B)
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < T - 1:
            _pool = ThreadPoolExecutor(max_workers=T - 1, thread_name_prefix="ksubset-kernels")
        pool = _pool
    C = max(1, min(-(-B // align), CHUNKS_PER_THREAD * T))
    bounds = [min(B, (B * c // C + align - 1) // align * align) for c in range(C + 1)]
    claim = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while (c := next(claim)) < C:
            fn(*args, bounds[c], bounds[c + 1])

    futures = [pool.submit(work) for _ in range(T - 1)]
    work()
    for f in futures:
        if not f.cancel():  # started: it may hold a chunk
            f.result()


_NO_U = np.zeros((0, 1, 1))


def _sweep(
    theta: Tensor, k: Tensor, K: int, want_mu: bool, v: Tensor | None, u: np.ndarray | None, want_h: bool = False
):
    """Samples ``[S, B, n]``, marginals ``[B, n]`` (``[B, 1]`` unless ``want_mu``), ``Cov v`` (``[B, 1]`` unless
    ``v`` is given) and entropies ``[B]`` (zeros unless ``want_h``) from one sweep per row."""
    _require()
    want_mu = want_mu or want_h
    B, n = theta.shape
    th = _as_f64(theta)
    kk = _as_i64(k)
    K = int(K)
    want_cov = v is not None
    vv = _as_f64(v) if want_cov else th
    uu = _NO_U if u is None else u
    S = uu.shape[0]
    z = np.zeros((S, B, n), np.int64)
    mu = np.zeros((B, n) if want_mu else (B, 1))
    cov = np.zeros((B, n) if want_cov else (B, 1))
    h = np.zeros(B if want_h else 1)
    ok = np.ones(B, np.bool_)
    dense = 0 < K <= DENSE_MAX_K
    args = (th, kk, K, want_mu, want_cov, want_h, vv, uu, z, mu, cov, h, ok)
    if _use_lanes(B, n, K):
        _run_rows(_lanes_rows, B, n, K, *args, align=LANES)
    else:
        s = _block_size(n, K, TABLE_LIMIT)
        _run_rows(_sweep_rows, B, n, K, th, kk, K, s, *args[3:], dense)
    zt, mut, covt, ht = torch.from_numpy(z), torch.from_numpy(mu), torch.from_numpy(cov), torch.from_numpy(h)
    if not ok.all():  # a safety net (see the module docstring)
        _on_fallback("the sweep", int((~ok).sum()))
        zt, mut, covt, ht = _fallback(theta, k, K, want_mu, v, u, want_h, ok, zt, mut, covt, ht)
    return zt, mut, covt, ht


def _fallback(theta, k, K, want_mu, v, u, want_h, ok, z, mu, cov, h):
    """Recompute the rows the kernel could not handle with the tree engine (in float64)."""
    from . import tree

    bad = torch.from_numpy(~ok)
    th = theta.detach().to(torch.float64)[bad]
    kb = k[bad]
    if want_mu:
        mu[bad] = tree.marginals(th, kb, K)
    if v is not None:
        cov[bad] = tree.cov_vec(th, kb, K, v.detach().to(torch.float64)[bad])
    if u is not None and u.shape[0]:
        # walk the tree with fresh uniforms derived from the ones drawn for these rows
        g = torch.Generator().manual_seed(int(u[:, ~ok].sum() * 2**20) % 2**63)
        z[:, bad] = tree.sample(th, kb, K, u.shape[0], g)
    if want_h:
        h[bad] = tree.entropy(th, kb, K)
    return z, mu, cov, h


def uniforms(theta: Tensor, num_samples: int, generator=None) -> Tensor:
    """One float64 uniform per item and sample, ``[S, B, n]``, drawn on the CPU."""
    B, n = theta.shape
    return rand((num_samples, B, n), generator, torch.device("cpu"), torch.float64)


def log_partition(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """``log e_k(exp theta)`` per row, ``[B]``."""
    _require()
    B, n = theta.shape
    out = np.empty(B)
    th, kk = _as_f64(theta), _as_i64(k)
    _run_rows(_log_z_rows, B, n, K, th, kk, int(K), out, 0 < K <= DENSE_MAX_K)
    res = torch.from_numpy(out)
    bad = ~torch.isfinite(res)
    if bad.any():  # a safety net (see the module docstring)
        from . import tree

        _on_fallback("log Z", int(bad.sum()))
        res[bad] = tree.log_partition(theta.detach().to(torch.float64)[bad], k[bad], K)
    return res.to(theta.dtype)


def marginals(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """``Pr(z_i = 1)``, ``[B, n]``."""
    _, mu, _, _ = _sweep(theta, k, K, True, None, None)
    return mu.to(theta.dtype)


def cov_vec(theta: Tensor, k: Tensor, K: int, v: Tensor) -> Tensor:
    """``Cov(z) v`` per row, ``[B, n]`` (entries of ``v`` on non-free items are ignored)."""
    _, _, cov, _ = _sweep(theta, k, K, False, v, None)
    return cov.to(theta.dtype)


def entropy(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """Entropy per row ``[B]``, computed in float64 inside the sweep from the tilted (centred) logits.

    ``H = log Pr(S = k) + sum_i softplus(y_i) - mu_i y_i`` with ``y = theta + c`` (the tilt), which equals
    ``log Z - theta . mu`` but does not cancel two numbers of size ``k |theta|``: the absolute error is about
    ``eps64 * sum_i |y_i|``, independent of a common offset of the logits.
    """
    _, _, _, h = _sweep(theta, k, K, True, None, None, want_h=True)
    return h.to(theta.dtype)


def sample_given(theta: Tensor, k: Tensor, K: int, u: Tensor) -> Tensor:
    """Exact samples ``[S, B, n]`` int64 in {0, 1} from the uniforms ``u [S, B, n]`` of :func:`uniforms`."""
    z, _, _, _ = _sweep(theta, k, K, False, None, _as_f64(u))
    return z


def sample(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None) -> Tensor:
    """Exact samples, ``[S, B, n]`` int64 in {0, 1}, with ``k`` ones on free items of each row."""
    return sample_given(theta, k, K, uniforms(theta, num_samples, generator))


def sample_and_marginals_given(theta: Tensor, k: Tensor, K: int, u: Tensor):
    """One forward pass and one sweep shared by a draw ``[S, B, n]`` (from ``u``) and the marginals."""
    z, mu, _, _ = _sweep(theta, k, K, True, None, _as_f64(u))
    return z, mu.to(theta.dtype)


def sample_and_marginals(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None):
    """One forward pass and one sweep shared by a draw ``[S, B, n]`` and the marginals ``[B, n]``."""
    return sample_and_marginals_given(theta, k, K, uniforms(theta, num_samples, generator))
