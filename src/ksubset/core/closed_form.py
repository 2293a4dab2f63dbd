"""Closed forms for rows that choose one item, or all but one (an engine for ``k ≤ 1`` and ``k ≥ m − 1``).

Choosing one of ``m`` free items is a categorical distribution: ``log Z`` is a log-sum-exp, the marginals
are the softmax, ``Cov(z) = diag(p) − p pᵀ``, and Gumbel-max is an exact sampler. Choosing all but one is
the same distribution on the excluded item, with the logits negated: ``z = free − onehot(j)``,
``j ~ softmax(−θ)``. Every other quantity follows from that: ``log Z = Σθ + logsumexp(−θ)``,
``μ = 1 − q``, ``Cov(z) = Cov(onehot(j))`` and the third cumulant changes sign. Rows with ``k = 0`` or
``k = m`` are deterministic.

This module implements the engine contract of :mod:`.engine` for batches in which every row has
``k ∈ {0, 1, m − 1, m}`` (``m`` = the row's free items); :func:`.engine.engine_for_call` picks it when the
caller's ``k`` is a Python int ≤ 1 or ≥ n − 1, which guarantees that after canonicalisation. It costs a
few elementwise passes per row, with no recursion, no host synchronisation and no padding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .numerics import rand

__all__ = [
    "log_partition",
    "marginals",
    "cov_vec",
    "cov3",
    "entropy",
    "uniforms",
    "sample_given",
    "sample_and_marginals_given",
]

_NEG_INF = float("-inf")


class _Rows:
    """Per-row case analysis of a canonical batch (``theta [B, n]``: finite = free, ``-inf`` elsewhere)."""

    def __init__(self, theta: Tensor, k: Tensor):
        self.free = torch.isfinite(theta)
        m = self.free.sum(-1)
        self.none = k == 0  # nothing chosen
        self.all = (k == m) & ~self.none  # every free item chosen
        self.one = (k == 1) & ~self.all  # categorical on the chosen item
        # categorical on the excluded item: k = m - 1 (the caller guarantees no other k, see the module doc)
        self.but_one = ~(self.none | self.all | self.one)
        # logits of the categorical: theta for k = 1 rows, -theta for k = m - 1 rows (-inf off the free items)
        neg = torch.where(self.free, -theta, torch.full((), _NEG_INF, dtype=theta.dtype, device=theta.device))
        self.logits = torch.where(self.but_one.unsqueeze(-1), neg, theta)
        self.categorical = (self.one | self.but_one).unsqueeze(-1)
        # rows without a categorical get a harmless all-zero row (no NaN from a softmax of -inf)
        safe = torch.where(self.categorical, self.logits, torch.zeros((), dtype=theta.dtype, device=theta.device))
        self.log_p = torch.log_softmax(safe, -1)
        self.p = torch.where(self.categorical, self.log_p.exp(), torch.zeros((), dtype=theta.dtype,
                                                                                device=theta.device))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1, keepdim=True)


def _free_or_zero(theta: Tensor, free: Tensor) -> Tensor:
    return torch.where(free, theta, torch.zeros((), dtype=theta.dtype, device=theta.device))


def log_partition(theta: Tensor, k: Tensor, K: int | None = None) -> Tensor:
    """``log Z`` per row ``[B]``."""
    R = _Rows(theta, k)
    total = _free_or_zero(theta, R.free).sum(-1)
    lse = torch.logsumexp(torch.where(R.categorical, R.logits, torch.zeros((), dtype=theta.dtype,
                                                                            device=theta.device)), -1)
    out = torch.where(R.one, lse, total + lse)  # k = m - 1: sum of all but one = total + log sum exp(-theta_j)
    out = torch.where(R.all, total, out)
    return torch.where(R.none, torch.zeros((), dtype=theta.dtype, device=theta.device), out)


def _marginals(R: _Rows) -> Tensor:
    # 1 - q for the excluded-item rows: when one q_j exceeds 1/2 (at most one can), 1 - q_j is the sum of the
    # other q's, summed directly so that a tiny marginal keeps its relative accuracy.
    q = R.p
    top = q.argmax(-1, keepdim=True)
    others = q.scatter(-1, top, 0.0).sum(-1, keepdim=True)
    comp = torch.where(q > 0.5, others.expand_as(q), 1.0 - q)
    comp = torch.where(R.free, comp, torch.zeros((), dtype=q.dtype, device=q.device))
    mu = torch.where(R.but_one.unsqueeze(-1), comp, q)
    return torch.where(R.all.unsqueeze(-1), R.free.to(q.dtype), mu)


def marginals(theta: Tensor, k: Tensor, K: int | None = None) -> Tensor:
    """``Pr(z_i = 1)`` ``[B, n]``."""
    return _marginals(_Rows(theta, k))


def _categorical_cov_vec(p: Tensor, v: Tensor) -> Tensor:
    """``(diag(p) − p pᵀ) v`` row by row."""
    return p * (v - _dot(p, v))


def cov_vec(theta: Tensor, k: Tensor, K: int | None, v: Tensor) -> Tensor:
    """``Cov(z) v`` ``[B, n]``; ``Cov(free − onehot) = Cov(onehot)``, and ``p`` is 0 off the free items."""
    R = _Rows(theta, k)
    v = _free_or_zero(v.to(theta.dtype), R.free)
    return _categorical_cov_vec(R.p, v)


def cov3(theta: Tensor, k: Tensor, K: int | None, v: Tensor, w: Tensor) -> Tensor:
    """``Σ_jl κ_ijl v_j w_l`` ``[B, n]``: the derivative of ``Cov(z) v`` along ``w``.

    For a categorical with probabilities ``p`` and ``c = Cov w``: ``c ⊙ (v − p·v) − p (c·v)``. The
    excluded-item rows see ``−θ``, so their derivative along ``w`` changes sign.
    """
    R = _Rows(theta, k)
    v = _free_or_zero(v.to(theta.dtype), R.free)
    w = _free_or_zero(w.to(theta.dtype), R.free)
    c = _categorical_cov_vec(R.p, w)
    out = c * (v - _dot(R.p, v)) - R.p * _dot(c, v)
    return torch.where(R.but_one.unsqueeze(-1), -out, out)


def entropy(theta: Tensor, k: Tensor, K: int | None = None) -> Tensor:
    """``H`` ``[B]``: the entropy of the categorical (0 for deterministic rows)."""
    R = _Rows(theta, k)
    terms = torch.where(R.p > 0, R.p * R.log_p, torch.zeros((), dtype=theta.dtype, device=theta.device))
    return 0.0 - terms.sum(-1)  # (not -sum: a deterministic row's entropy is +0, not -0)


def uniforms(theta: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """One uniform per item and draw, ``[S, B, n]`` (Gumbel-max)."""
    B, n = theta.shape
    return rand((num_samples, B, n), generator, theta.device, theta.dtype)


def _draw(R: _Rows, u: Tensor) -> Tensor:
    gumbel = -torch.log(-torch.log(u))  # u = 0 gives -inf (never chosen), as it should with probability 0
    keys = torch.where(R.categorical, R.logits, torch.full((), _NEG_INF, dtype=R.logits.dtype,
                                                          device=R.logits.device)) + gumbel
    pick = torch.zeros_like(keys, dtype=torch.bool).scatter_(-1, keys.argmax(-1, keepdim=True), True)
    pick = pick & R.categorical
    z = torch.where(R.but_one.unsqueeze(-1), R.free & ~pick, pick)
    return (z | (R.all.unsqueeze(-1) & R.free)).to(torch.int64)


def sample_given(theta: Tensor, k: Tensor, K: int | None, u: Tensor) -> Tensor:
    """Exact draws ``[S, B, n]`` int64 from the uniforms ``u [S, B, n]``."""
    return _draw(_Rows(theta, k), u)


def sample_and_marginals_given(theta: Tensor, k: Tensor, K: int | None, u: Tensor) -> tuple[Tensor, Tensor]:
    """``sample_given`` and ``marginals`` sharing the case analysis and the softmax."""
    R = _Rows(theta, k)
    return _draw(R, u), _marginals(R)
