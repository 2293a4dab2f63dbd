"""Closed forms for rows that choose one item, or all but one: two engines for ``k ≤ 1`` and ``k ≥ n − 1``.

Choosing one of ``m`` free items is a categorical distribution: ``log Z`` is a log-sum-exp, the marginals
are the softmax ``p``, ``Cov(z) = diag(p) − p pᵀ``, and inverting the cumulative distribution with one
uniform per row is an exact sampler. Choosing all but one is the same distribution on the *excluded* item
with the logits negated: ``z = free − onehot(j)``, ``j ~ softmax(−θ)``; hence ``log Z = Σθ + logsumexp(−θ)``,
``μ = 1 − q``, ``Cov(z) = Cov(onehot(j))``, the same entropy, and a third cumulant of opposite sign.

:func:`.engine.engine_for_call` picks :data:`ONE` when the caller's ``k`` is a Python int ≤ 1 and
:data:`ALL_BUT_ONE` when it is ≥ n − 1; after masks and infinite logits every row then chooses
``k ∈ {0, 1}`` of its ``m`` free items, respectively ``k ∈ {m − 1, m}``. Rows with nothing to draw (``k = 0``,
respectively ``k = m``) carry an all-zero categorical. A handful of elementwise passes per row: no
recursion, no host synchronisation, no padding (the generic softmax kernels of PyTorch are several times
slower than these passes when rows are short, so the softmax is written out).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels
from .numerics import rand

__all__ = ["ONE", "ALL_BUT_ONE", "ClosedForm"]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1, keepdim=True)


class _Categorical:
    """``p ∝ exp(logits)`` per row (``-inf`` = never drawn), zero on inactive rows (``active`` False)."""

    def __init__(self, logits: Tensor, active: Tensor):
        top = logits.amax(-1, keepdim=True)
        top = torch.where(top > float("-inf"), top, torch.zeros((), dtype=top.dtype, device=top.device))
        self.shifted = logits - top  # <= 0 on drawable items, -inf elsewhere
        self.e = self.shifted.exp()
        self.s = self.e.sum(-1, keepdim=True)  # >= 1 on rows with a drawable item
        self.active = active.unsqueeze(-1)
        # 1/s on active rows, 0 on the others (where s may be 0: a row with nothing left to draw)
        scale = torch.where(self.active, self.s.reciprocal(), torch.zeros((), dtype=self.s.dtype, device=self.s.device))
        self.p = self.e * scale
        self.lse = (top + self.s.log()).squeeze(-1)  # log sum exp(logits)

    def entropy(self) -> Tensor:
        # H = log s - sum p * shifted: two non-negative terms, no cancellation
        lowest = torch.finfo(self.shifted.dtype).min
        h = self.s.log().squeeze(-1) - (self.p * self.shifted.clamp_min(lowest)).sum(-1)
        return torch.where(self.active.squeeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))

    def draw(self, u: Tensor) -> Tensor:
        """One-hot draws ``[S, B, n]`` bool from ``u [S, B, 1]``: item ``j`` owns ``[c_{j-1}, c_j)`` of the
        cumulative weights ``c``, an empty interval when its weight is 0, so exactly one item is drawn."""
        c = self.e.cumsum(-1)
        before = torch.nn.functional.pad(c[..., :-1], (1, 0))
        total = c[..., -1:]
        target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # < total
        return (before <= target) & (target < c) & self.active


def _cov_vec(p: Tensor, v: Tensor) -> Tensor:
    """``(diag(p) − p pᵀ) v`` row by row."""
    return p * (v - _dot(p, v))


def _cov3(p: Tensor, v: Tensor, w: Tensor) -> Tensor:
    """The derivative of ``(diag(p) − p pᵀ) v`` along logits ``w``: with ``c = Cov w``,
    ``c ⊙ (v − p·v) − p (c·v)``."""
    c = _cov_vec(p, w)
    return c * (v - _dot(p, v)) - p * _dot(c, v)


def _free_or_zero(x: Tensor, free: Tensor) -> Tensor:
    return torch.where(free, x, torch.zeros((), dtype=x.dtype, device=x.device))


class ClosedForm:
    """The engine contract of :mod:`.engine` for one of the two cases (``excluded`` False: the categorical
    is on the chosen item; True: on the excluded one).

    With ``compiled`` (the default), rows that choose one item on the CPU (float32/float64, numba installed)
    take :func:`.kernels.categorical` for the probabilities and the draw and :func:`.kernels.categorical_cov_vec`
    for ``Cov(z) v``: one pass per row after PyTorch's exponentials, the same interval rule for the draw.
    """

    def __init__(self, excluded: bool, compiled: bool = True):
        self.excluded = excluded
        self.compiled = compiled

    def _compiled(self, theta: Tensor) -> bool:
        return self.compiled and not self.excluded and kernels.supports(theta)

    def _categorical(self, theta: Tensor, k: Tensor) -> tuple[_Categorical, Tensor]:
        """The categorical and the free items (``theta > -inf``: canonical logits are finite or ``-inf``)."""
        free = theta > float("-inf")
        if not self.excluded:  # -inf logits already weigh 0
            return _Categorical(theta, k != 0), free
        neg = torch.where(free, -theta, torch.full((), float("-inf"), dtype=theta.dtype, device=theta.device))
        return _Categorical(neg, k != free.sum(-1)), free

    def log_partition(self, theta: Tensor, k: Tensor, K: int | None = None) -> Tensor:
        """``log Z`` ``[B]``."""
        cat, free = self._categorical(theta, k)
        lse = torch.where(cat.active.squeeze(-1), cat.lse, torch.zeros((), dtype=theta.dtype, device=theta.device))
        if not self.excluded:
            return lse
        return _free_or_zero(theta, free).sum(-1) + lse  # Σ over all-but-one = Σθ + log Σ exp(−θ_j)

    def _marginals(self, cat: _Categorical, free: Tensor) -> Tensor:
        if not self.excluded:
            return cat.p
        # 1 − q; where one q_j exceeds 1/2 (at most one can), 1 − q_j is the sum of the other q's, summed
        # directly so that a tiny marginal keeps its relative accuracy
        q = cat.p
        others = q.scatter(-1, q.argmax(-1, keepdim=True), 0.0).sum(-1, keepdim=True)
        return _free_or_zero(torch.where(q > 0.5, others.expand_as(q), 1.0 - q), free)

    def marginals(self, theta: Tensor, k: Tensor, K: int | None = None) -> Tensor:
        """``Pr(z_i = 1)`` ``[B, n]``."""
        if self._compiled(theta):
            return kernels.categorical(theta, k != 0, None)[1]
        return self._marginals(*self._categorical(theta, k))

    def cov_vec(self, theta: Tensor, k: Tensor, K: int | None, v: Tensor) -> Tensor:
        """``Cov(z) v`` ``[B, n]`` (``Cov(free − onehot) = Cov(onehot)``)."""
        if self._compiled(theta):
            return kernels.categorical_cov_vec(kernels.categorical(theta, k != 0, None)[1], theta, v)
        cat, free = self._categorical(theta, k)
        return _cov_vec(cat.p, _free_or_zero(v.to(theta.dtype), free))

    def cov3(self, theta: Tensor, k: Tensor, K: int | None, v: Tensor, w: Tensor) -> Tensor:
        """``Σ_jl κ_ijl v_j w_l`` ``[B, n]``; the excluded item's categorical sees ``−θ``: opposite sign."""
        cat, free = self._categorical(theta, k)
        out = _cov3(cat.p, _free_or_zero(v.to(theta.dtype), free), _free_or_zero(w.to(theta.dtype), free))
        return -out if self.excluded else out

    def entropy(self, theta: Tensor, k: Tensor, K: int | None = None) -> Tensor:
        """``H`` ``[B]`` (0 on deterministic rows)."""
        return self._categorical(theta, k)[0].entropy()

    def uniforms(self, theta: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """One uniform per row and draw, ``[S, B, 1]``."""
        return rand((num_samples, theta.shape[0], 1), generator, theta.device, theta.dtype)

    def _draw(self, cat: _Categorical, free: Tensor, u: Tensor) -> Tensor:
        pick = cat.draw(u)
        return (free & ~pick if self.excluded else pick).to(torch.int64)

    def sample_given(self, theta: Tensor, k: Tensor, K: int | None, u: Tensor) -> Tensor:
        """Exact draws ``[S, B, n]`` int64 from ``u [S, B, 1]``."""
        if self._compiled(theta):
            return kernels.categorical(theta, k != 0, u)[0]
        cat, free = self._categorical(theta, k)
        return self._draw(cat, free, u)

    def sample_and_marginals_given(self, theta: Tensor, k: Tensor, K: int | None, u: Tensor) -> tuple[Tensor, Tensor]:
        """``sample_given`` and ``marginals`` from one softmax."""
        if self._compiled(theta):
            return kernels.categorical(theta, k != 0, u)
        cat, free = self._categorical(theta, k)
        return self._draw(cat, free, u), self._marginals(cat, free)

    def sample_and_marginals_kept(self, theta: Tensor, k: Tensor, K: int | None, u: Tensor):
        """``sample_and_marginals_given`` and the categorical's probabilities ``[B, n]`` (what
        :meth:`cov_vec_kept` reuses); the draws in ``theta``'s dtype when compiled (where SIMPLE wants them),
        else int64."""
        if self._compiled(theta):
            z, p = kernels.categorical(theta, k != 0, u, z_float=True)
            return z, p, p
        cat, free = self._categorical(theta, k)
        return self._draw(cat, free, u), self._marginals(cat, free), cat.p

    def cov_vec_kept(self, theta: Tensor, k: Tensor, K: int | None, v: Tensor, kept: Tensor) -> Tensor:
        """``cov_vec`` from the probabilities :meth:`sample_and_marginals_kept` returned (0 off the free items,
        where they are 0)."""
        if self._compiled(theta):
            return kernels.categorical_cov_vec(kept, theta, v)
        return _cov_vec(kept, _free_or_zero(v.to(theta.dtype), theta > float("-inf")))


#: Rows that choose ``k ∈ {0, 1}`` of their free items.
ONE = ClosedForm(excluded=False)
#: Rows that choose ``k ∈ {m − 1, m}`` of their ``m`` free items.
ALL_BUT_ONE = ClosedForm(excluded=True)
