"""Parallel twins of the row kernels: one compiled call that runs a kernel over row chunks on numba's
OpenMP threads (imported only with numba; see :mod:`.pool` for when they are used).

Each twin takes ``bounds`` (int64, ``C + 1`` chunk boundaries) and the kernel's own arguments, and calls the
kernel on rows ``bounds[c] .. bounds[c+1]-1`` for every chunk ``c`` in a ``prange`` loop. Chunks write
disjoint rows of the outputs, so the twins need no synchronisation. Why twins instead of a Python thread
pool: a pool hand-off costs tens of microseconds a call and, with PyTorch's own OpenMP workers spinning
after each operation, often much more on a busy two-core machine; a parallel region starts on threads
that are awake (measured in :mod:`.pool`).

Why one twin per kernel, spelled out, instead of one generic ``twin(kernel, bounds, args)``: numba keys a
function that takes a dispatcher argument on that dispatcher object, so its on-disk cache never hits and
every process would compile the twin again (20 s for the lanes kernel's).
"""

from __future__ import annotations

import numba

from .categorical import _categorical_cov_rows, _categorical_rows
from .forward import _log_z_rows
from .lanes import _lanes_log_z_rows, _lanes_rows
from .rows import _sweep_rows
from .split import _halves_backward, _halves_forward

# Same code-generation choices as :mod:`.common` (the twins only loop and call the kernels).
_par = numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")


@_par
def _lanes_rows_par(bounds, theta, k, K, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, mode, T):
    for c in numba.prange(bounds.shape[0] - 1):
        _lanes_rows(
            theta, k, K, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, mode, T,
            bounds[c], bounds[c + 1],
        )  # fmt: skip


@_par
def _sweep_rows_par(bounds, theta, k, K, s, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, dense):
    for c in numba.prange(bounds.shape[0] - 1):
        _sweep_rows(
            theta, k, K, s, want_mu, want_cov, want_h, v, u, z, mu_out, cov_out, h_out, ok, dense,
            bounds[c], bounds[c + 1],
        )  # fmt: skip


@_par
def _lanes_log_z_rows_par(bounds, theta, k, K, out):
    for c in numba.prange(bounds.shape[0] - 1):
        _lanes_log_z_rows(theta, k, K, out, bounds[c], bounds[c + 1])


@_par
def _log_z_rows_par(bounds, theta, k, K, out, dense):
    for c in numba.prange(bounds.shape[0] - 1):
        _log_z_rows(theta, k, K, out, dense, bounds[c], bounds[c + 1])


@_par
def _categorical_rows_par(bounds, theta, e, active, u, z, p, lim):
    for c in numba.prange(bounds.shape[0] - 1):
        _categorical_rows(theta, e, active, u, z, p, lim, bounds[c], bounds[c + 1])


@_par
def _categorical_cov_rows_par(bounds, p, theta, v, out):
    for c in numba.prange(bounds.shape[0] - 1):
        _categorical_cov_rows(p, theta, v, out, bounds[c], bounds[c + 1])


@_par
def _halves_forward_par(bounds, p, q, w, m, k, dn, s, with_g, ta, tg, ea, ca, cg, ce):
    for c in numba.prange(bounds.shape[0] - 1):
        _halves_forward(p, q, w, m, k, dn, s, with_g, ta, tg, ea, ca, cg, ce, bounds[c], bounds[c + 1])


@_par
def _halves_backward_par(
    bounds, ta, tg, ea, ca, cg, ce, rr, hh, er, need, with_g, want_mu, s, idx, x, p, q, w, m, k, dn,
    zk, ez, gbar, u, b, u_first, z, mu_out, cov_out,
):  # fmt: skip
    for c in numba.prange(bounds.shape[0] - 1):
        _halves_backward(
            ta, tg, ea, ca, cg, ce, rr, hh, er, need, with_g, want_mu, s, idx, x, p, q, w, m, k, dn,
            zk, ez, gbar, u, b, u_first, z, mu_out, cov_out, bounds[c], bounds[c + 1],
        )  # fmt: skip


@_par
def _probe(out):
    """Writes each index of ``out``: one parallel launch, to find which threading layer numba loads."""
    for i in numba.prange(out.shape[0]):
        out[i] = i


#: Kernel → its parallel twin.
TWINS = {
    _lanes_rows: _lanes_rows_par,
    _sweep_rows: _sweep_rows_par,
    _lanes_log_z_rows: _lanes_log_z_rows_par,
    _log_z_rows: _log_z_rows_par,
    _categorical_rows: _categorical_rows_par,
    _categorical_cov_rows: _categorical_cov_rows_par,
    _halves_forward: _halves_forward_par,
    _halves_backward: _halves_backward_par,
}
