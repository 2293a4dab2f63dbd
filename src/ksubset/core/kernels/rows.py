"""The per-row layout (dense or banded): one row at a time through :mod:`.forward` and :mod:`.backward`.

*Banded* computes only the counts that can still reach ``k`` at each item. *Dense* (``K <= DENSE_MAX_K``)
computes every count up to a multiple of 16 that is at least ``k + 1`` (see :func:`.forward._band`): a little
more arithmetic for small ``k``, but loops whose trip count is a multiple of the vector length.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from .backward import _row_sweep
from .common import _jit
from .forward import _dense_width

#: Work space of one thread for the per-row sweep (float64 unless noted; ``L`` the table row stride):
#: ``idx [n]`` int64 free items' columns, ``need [S]`` int64 items still to draw per sample, ``ea [rows]``
#: int64 and ``ce [ncp]`` int64 table rows' and checkpoints' power-of-two exponents, ``x``, ``p``, ``q`` ``[n]``
#: tilted logits and probabilities, ``w [n]`` centred ``v``, ``ta``/``tg [rows, L]`` the forward tables
#: ``A``/``G`` (one block), ``ca``/``cg [ncp, L]`` their checkpoints, ``rr``/``hh [2, L]`` the backward vectors
#: ``R``/``H`` (ping-pong rows).
RowWorkspace = namedtuple("RowWorkspace", "idx need ea ce x p q w ta tg ca cg rr hh")


@_jit
def _workspace(n, K, S, s, want_cov, dense):
    """A :data:`RowWorkspace` for one thread, sized for any row of the batch (table rows have stride ``L``)."""
    rows = min(s, n + 1)
    nb = (n + s) // s
    ncp = nb if nb > 1 else 1
    L = max(K, _dense_width(K) if dense else 0) + 2
    return RowWorkspace(
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
    """Rows ``b0 .. b1-1`` one by one (table blocks of ``s`` rows; dense width when ``dense``)."""
    ws = _workspace(theta.shape[1], K, u.shape[0], s, want_cov, dense)
    for b in range(b0, b1):
        ok[b] = _row_sweep(
            theta[b], k[b], s, want_mu, want_cov, want_h, v[b], u, b, z, mu_out[b], cov_out[b], h_out, ws, dense
        )
