"""Compiled CPU engine (numba): a sequential forward-backward over the items, rows in parallel.

Same interface as :mod:`..tree` and :mod:`..reference` (the canonical problem of :mod:`.._problem`:
``theta [B, n]`` finite on free items and ``-inf`` elsewhere, ``k [B]`` with ``0 <= k <= #free``). numba is
the optional extra ``ksubset[fast]``: without it :func:`available` is False and the dispatcher in
:mod:`..functions` uses the tree engine.

Per row (``m`` free items, ``k`` to choose; all arithmetic in float64 whatever the input dtype), one module
per step:

1. :mod:`.tilt`: a shift ``c`` with ``sum_i sigmoid(theta_i + c) = k``, so that ``Pr(S = k) >= 1 / (m + 1)``
   under the tilted Bernoullis and probability space needs no logarithms;
2. :mod:`.forward`: the forward table ``A_i[j] = Pr(S_{1..i} = j)`` (kept whole, or as checkpoints every
   ``~sqrt(n)`` rows when it has more than :data:`TABLE_LIMIT` entries) and ``log Z``;
3. :mod:`.backward`: the backward sweep giving marginals, entropy, covariance-vector products and samples;
4. layouts: :mod:`.rows` one row at a time (*dense*: every count up to a multiple of 16 for
   ``K <= DENSE_MAX_K``; *banded* otherwise), or :mod:`.lanes` :data:`LANES` rows side by side (``K <=
   LANES_MAX_K`` with several rows);
5. :mod:`.pool` spreads rows over ``torch.get_num_threads()`` threads (numba's OpenMP threads running the
   :mod:`.parallel` twins of the kernels, else a Python thread pool); rows the kernel cannot compute are
   counted and recomputed by the tree engine (:mod:`.fallback`, :data:`FALLBACK_POLICY`); when rows are
   fewer than threads, a long row's two halves are swept on two threads (:mod:`.split`).

Cost per row, in passes of ``m k`` multiply-adds: ``log_partition`` 1; ``marginals``, ``entropy`` and
``sample_and_marginals`` 3 (4 with checkpoints); ``sample`` 1 (2); ``cov_vec`` 7 (9). Peak memory with
checkpoints is ``O(sqrt(n) k)`` per row in flight (16 MB at ``n = 10^6, k = 1000``).

Fused calls (one sweep where separate calls would take two or three): :func:`entropy_with_grad` (``H`` and
``-Cov(z) theta``), :func:`entropy_marginals_cov` (what ``kl_divergence`` needs of each distribution), and
:func:`sample_and_marginals_kept` / :func:`cov_vec_kept` (the lanes layout keeps its tilt ``[3, B, n]`` for
SIMPLE's backward). :mod:`..functions` uses them in plain eager mode for first-order backward passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..numerics import rand
from . import fallback as _fb
from .fallback import KernelFallbackError, KernelFallbackWarning, fallback_count
from .pool import run_rows

try:  # numba is optional (the ``fast`` extra)
    import numba
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None  # type: ignore[assignment]

if numba is not None:
    from . import split as _split
    from .categorical import _categorical_cov_rows, _categorical_rows
    from .forward import _block_size, _log_z_rows
    from .lanes import LANES, _lanes_log_z_rows, _lanes_rows
    from .rows import _sweep_rows
    from .split import split_row_sweep

__all__ = [
    "available",
    "supports",
    "log_partition",
    "marginals",
    "cov_vec",
    "entropy",
    "entropy_with_grad",
    "entropy_marginals_cov",
    "uniforms",
    "sample",
    "sample_given",
    "sample_and_marginals",
    "sample_and_marginals_given",
    "sample_and_marginals_kept",
    "cov_vec_kept",
    "categorical",
    "categorical_cov_vec",
    "FALLBACK_POLICY",
    "KernelFallbackError",
    "KernelFallbackWarning",
    "fallback_count",
    "fallback_policy",
]

#: Largest forward table (entries, float64, per row in flight) kept whole; larger rows use checkpoints.
TABLE_LIMIT = 1 << 21

#: Up to this K the per-row layout computes every count up to a multiple of 16 (see ``forward._band``).
DENSE_MAX_K = 63

#: The lanes layout is used when K <= LANES_MAX_K, with at least two rows, and its table fits the limit.
LANES_MAX_K = 16
LANES_TABLE_LIMIT = 1 << 20

#: Below this much work (``B n (K + 1)``) the kernels run on one thread (thread start-up costs more).
PARALLEL_MIN_WORK = 1 << 17

#: Row chunks per thread (see :func:`.pool.run_rows`).
CHUNKS_PER_THREAD = 4

#: What happens when a row cannot be computed by the kernel and is recomputed by the tree engine (the result
#: stays exact): ``"warn"`` (a :class:`KernelFallbackWarning`), ``"raise"`` (a :class:`KernelFallbackError`
#: instead of the fallback) or ``"silent"``. Every fallback is counted (:func:`fallback_count`).
FALLBACK_POLICY = "warn"


@contextlib.contextmanager
def fallback_policy(policy: str) -> Iterator[None]:
    """Run the block with :data:`FALLBACK_POLICY` set to ``policy`` (process-wide; restored on exit)."""
    global FALLBACK_POLICY
    if policy not in _fb.POLICIES:
        raise ValueError(f"policy must be one of {_fb.POLICIES}, got {policy!r}")
    before, FALLBACK_POLICY = FALLBACK_POLICY, policy
    try:
        yield
    finally:
        FALLBACK_POLICY = before


def available() -> bool:
    """Whether numba is importable (the engine works only then)."""
    return numba is not None


def supports(theta: Tensor) -> bool:
    """Whether this engine handles ``theta``: a CPU float32/float64 tensor, with numba installed."""
    return numba is not None and theta.device.type == "cpu" and theta.dtype in (torch.float32, torch.float64)


def _require() -> None:
    if numba is None:
        raise RuntimeError("the kernels engine needs numba: pip install 'ksubset[fast]'")


def _as_f64(x: Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).contiguous().numpy()


def _as_same(x: Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _as_i64(k: Tensor) -> np.ndarray:
    return k.detach().to(torch.int64).contiguous().numpy()


def _threads(B: int, n: int, K: int) -> int:
    """How many threads to split the rows over (1: the calling thread alone)."""
    if B < 2 or B * n * (K + 1) < PARALLEL_MIN_WORK:
        return 1
    return max(1, min(B, torch.get_num_threads()))


def _use_lanes(B: int, n: int, K: int) -> bool:
    return B >= 2 and 0 < K <= LANES_MAX_K and (n + 1) * (K + 2) * LANES <= LANES_TABLE_LIMIT


def _run_rows(fn, B: int, n: int, K: int, *args, align: int = 1) -> None:
    """``fn(*args, b0, b1)`` over row ranges, on up to ``torch.get_num_threads()`` threads."""
    run_rows(fn, B, _threads(B, n, K), args, align, CHUNKS_PER_THREAD)


_NO_U = np.zeros((0, 1, 1))
_NO_TILT = np.zeros((3, 1, 1))


def _sweep(
    theta: Tensor, k: Tensor, K: int, want_mu: bool, v: Tensor | None, u: np.ndarray | None, want_h: bool = False
):
    """Samples ``[S, B, n]``, marginals ``[B, n]`` (``[B, 1]`` unless ``want_mu``), ``Cov v`` (``[B, 1]`` unless
    ``v`` is given) and entropies ``[B]`` (``[1]`` unless ``want_h``) from one sweep per row."""
    return _sweep_tilted(theta, k, K, want_mu, v, u, want_h)[:4]


def _sweep_tilted(
    theta: Tensor,
    k: Tensor,
    K: int,
    want_mu: bool,
    v: Tensor | None,
    u: np.ndarray | None,
    want_h: bool = False,
    keep_tilt: bool = False,
    tilt: np.ndarray | None = None,
    z_dtype=np.int64,
):
    """:func:`_sweep`, plus the tilt: with ``keep_tilt`` the lanes layout also returns the tilted ``p``, ``q``
    and logits as ``[3, B, n]`` float64 (None in the per-row layout, which does not keep them); given that
    array as ``tilt`` (same ``theta`` and ``k``), the sweep reuses it instead of tilting again. The draws come
    in ``z_dtype`` (a numpy dtype)."""
    _require()
    want_mu = want_mu or want_h
    B, n = theta.shape
    th = _as_f64(theta)
    kk = _as_i64(k)
    K = int(K)
    want_cov = v is not None
    vv = th if v is None else _as_f64(v)
    uu = _NO_U if u is None else u
    S = uu.shape[0]
    z = np.zeros((S, B, n), z_dtype)
    mu = np.zeros((B, n) if want_mu else (B, 1))
    cov = np.zeros((B, n) if want_cov else (B, 1))
    h = np.zeros(B if want_h else 1)
    ok = np.ones(B, np.bool_)
    dense = 0 < K <= DENSE_MAX_K
    args = (th, kk, K, want_mu, want_cov, want_h, vv, uu, z, mu, cov, h, ok)
    kept = None
    if _use_lanes(B, n, K):
        if tilt is not None:
            mode, T = 2, tilt
        elif keep_tilt:
            mode, T = 1, np.empty((3, B, n))
            kept = T
        else:
            mode, T = 0, _NO_TILT
        _run_rows(_lanes_rows, B, n, K, *args, mode, T, align=LANES)
    else:
        s = _block_size(n, K, TABLE_LIMIT)
        if _split_wanted(B, n, K):  # long rows, fewer than threads: each row's halves in parallel
            _split_rows(th, kk, K, s, dense, args)
        else:
            _run_rows(_sweep_rows, B, n, K, th, kk, K, s, *args[3:], dense)
    zt, mut, covt, ht = torch.from_numpy(z), torch.from_numpy(mu), torch.from_numpy(cov), torch.from_numpy(h)
    if not ok.all():  # a safety net (see .fallback)
        _fb.report("the sweep", int((~ok).sum()), FALLBACK_POLICY)
        zt, mut, covt, ht = _fb.recompute_sweep(theta, k, K, want_mu, v, u, want_h, ok, zt, mut, covt, ht)
    return zt, mut, covt, ht, kept


def _split_wanted(B: int, n: int, K: int) -> bool:
    """Whether rows are fewer than threads and long enough to sweep each over two threads (:mod:`.split`)."""
    return B < torch.get_num_threads() and n >= _split.SPLIT_MIN_ITEMS and B * n * (K + 1) >= PARALLEL_MIN_WORK


def _split_rows(th, kk, K, s, dense, args) -> None:
    """The sweep of each row, its two halves on two threads (:mod:`.split`) where it is long enough."""
    want_mu, want_cov, want_h, vv, uu, z, mu, cov, h, ok = args[3:]

    def run(fn, B, fn_args):
        run_rows(fn, B, 2, fn_args, 1, 1)

    for b in range(th.shape[0]):
        m = int(np.count_nonzero(th[b] > -np.inf))
        if 0 < kk[b] < m and m >= max(_split.SPLIT_MIN_ITEMS, 2):
            ok[b] = split_row_sweep(th, kk, TABLE_LIMIT, want_mu, want_cov, want_h, vv, uu, b, z, mu, cov, h, run)
        else:
            sweep: Any = _sweep_rows  # a numba dispatcher (its signature is the Python function's)
            sweep(th, kk, K, s, *args[3:], dense, b, b + 1)


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
    if _use_lanes(B, n, K):
        _run_rows(_lanes_log_z_rows, B, n, K, th, kk, int(K), out, align=LANES)
    else:
        _run_rows(_log_z_rows, B, n, K, th, kk, int(K), out, 0 < K <= DENSE_MAX_K)
    res = torch.from_numpy(out)
    bad = ~torch.isfinite(res)
    if bad.any():  # a safety net (see .fallback)
        _fb.report("log Z", int(bad.sum()), FALLBACK_POLICY)
        res = _fb.recompute_log_partition(theta, k, K, res, bad)
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


def entropy_with_grad(theta: Tensor, k: Tensor, K: int) -> tuple[Tensor, Tensor]:
    """Entropy ``[B]`` and its gradient ``-Cov(z) theta`` ``[B, n]`` (0 on non-free items) from one sweep.

    The gradient needs no centring of ``theta``: the sweep centres ``v`` by its tilted mean in float64.
    """
    v = torch.where(torch.isfinite(theta), theta, 0.0)
    _, _, cov, h = _sweep(theta, k, K, True, v, None, want_h=True)
    return h.to(theta.dtype), cov.neg_().to(theta.dtype)


def entropy_marginals_cov(theta: Tensor, k: Tensor, K: int, v: Tensor | None):
    """Entropy ``[B]``, marginals ``[B, n]`` and ``Cov(z) v`` ``[B, n]`` (None without ``v``) from one sweep,
    in float64 (callers that take differences of entropies keep the precision)."""
    _, mu, cov, h = _sweep(theta, k, K, True, v, None, want_h=True)
    return h, mu, (cov if v is not None else None)


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


def sample_and_marginals_kept(theta: Tensor, k: Tensor, K: int, u: Tensor):
    """:func:`sample_and_marginals_given` (but the draws in ``theta``'s dtype, as SIMPLE uses them) and what
    :func:`cov_vec_kept` reuses (the tilt, or None)."""
    z_dtype = theta.detach().numpy().dtype
    z, mu, _, _, kept = _sweep_tilted(theta, k, K, True, None, _as_f64(u), keep_tilt=True, z_dtype=z_dtype)
    return z, mu.to(theta.dtype), kept


def cov_vec_kept(theta: Tensor, k: Tensor, K: int, v: Tensor, kept) -> Tensor:
    """:func:`cov_vec`, reusing the tilt that :func:`sample_and_marginals_kept` returned for these logits."""
    _, _, cov, _, _ = _sweep_tilted(theta, k, K, False, v, None, tilt=kept)
    return cov.to(theta.dtype)


def sample_and_marginals(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None):
    """One forward pass and one sweep shared by a draw ``[S, B, n]`` and the marginals ``[B, n]``."""
    return sample_and_marginals_given(theta, k, K, uniforms(theta, num_samples, generator))


def categorical(theta: Tensor, active: Tensor, u: Tensor | None, z_float: bool = False) -> tuple[Tensor, Tensor]:
    """Rows that choose one item: draws ``[S, B, n]`` int64 (in ``theta``'s dtype with ``z_float``; ``S = 0``
    when ``u`` is None) and the probabilities ``softmax(theta)`` ``[B, n]`` in ``theta``'s dtype (0 on rows
    where ``active`` is False).

    ``theta [B, n]`` finite or ``-inf`` (an active row has a finite entry), ``active [B]`` bool, ``u [S, B, 1]``
    uniforms in ``theta``'s dtype (one per row and draw, as :mod:`..closed_form` draws them).
    """
    _require()
    B, n = theta.shape
    th = _as_same(theta)
    e = theta.detach().exp().contiguous().numpy()  # vectorised; rows out of range are redone by the kernel
    lim = 80.0 if th.dtype == np.float32 else 700.0
    uu = _NO_U[:, :, 0] if u is None else u.detach().reshape(u.shape[0], B).contiguous().numpy()
    z = np.zeros((uu.shape[0], B, n), e.dtype if z_float else np.int64)
    p = np.empty((B, n), e.dtype)
    _run_rows(_categorical_rows, B, n, 1, th, e, active.contiguous().numpy(), uu, z, p, lim)
    return torch.from_numpy(z), torch.from_numpy(p)


def categorical_cov_vec(p: Tensor, theta: Tensor, v: Tensor) -> Tensor:
    """``p (v - p . v)`` per row on the free items (``theta > -inf``), 0 elsewhere, ``[B, n]`` in ``p``'s
    dtype: ``Cov(z) v`` for a categorical ``z`` with probabilities ``p [B, n]``."""
    _require()
    p = p.detach().contiguous()
    B, n = p.shape
    out = np.empty((B, n), p.numpy().dtype)
    vv = v.detach().to(p.dtype).contiguous().numpy()
    _run_rows(_categorical_cov_rows, B, n, 1, p.numpy(), _as_same(theta), vv, out)
    return torch.from_numpy(out)
