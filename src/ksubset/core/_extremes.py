"""The float-range limit of extreme *finite* logits (the "limit rule").

``p(z) ∝ exp(theta · z)`` is continuous in ``theta``, and as one logit runs off to ``-inf`` (``+inf``) the
distribution tends to the one where that item is unavailable (forced). A finite logit that lies further below
(above) the others than ``exp`` can resolve in the compute dtype is already *at* that limit to rounding, so it is
treated exactly so: masking with ``torch.finfo(dtype).min``, filling with ``-1e15`` or a logit of ``1e20`` then
give the same samples, marginals, entropy and gradients as a boolean mask or a ``+inf`` logit would, instead of
overflowing the engines' arithmetic.

The rule, per row, on the free items of the canonical problem (``k`` of ``m`` to choose): sort their logits
``t_1 >= ... >= t_m`` and call a gap ``t_j - t_{j+1} > G`` *decisive*, with ``G = -log(smallest subnormal) +
log(2n)`` of the compute dtype. A decisive gap at ``j <= k`` forces items ``1..j``: a k-subset that leaves one of
them out swaps it for an item below the gap, so ``Pr(leave out) <= n e^{-G}``, half the smallest subnormal. A
decisive gap at ``j >= k`` makes items ``j+1..m`` unavailable (the same bound). Between the last forcing gap and
the first removing gap no gap is decisive, so what remains spans at most ``(m - 1) G``. Ties at any magnitude
(two items at ``1e30``, ``k = 1``) are never split: they share the probability as in the limit.

What changes against the caller's logits ``x`` is exact to rounding:

* ``log Z = sum_{limit-forced} x_i + k' r + log Z'`` where ``Z'`` is the partition function of the remaining
  problem re-centred by ``r`` (:func:`full_log_z`, computed without intermediate overflow); ``r`` is the
  largest remaining logit where subtracting it is exact (so ``log Z`` of ties at ``1e30`` keeps its ``log 2``),
  else 0;
* ``log p(z)`` keeps its true finite value for every k-subset ``z`` (:func:`log_prob_terms`), very negative for
  a ``z`` that leaves out a limit-forced item or takes a limit-removed one;
* marginals are 1/0 on the limit items and their derivatives (the covariance) vanish there.

Cost: a call pays one global min/max and one host sync (:func:`needed`) to learn that no logit is beyond ``±G``
and no row spans more than ``G``; only otherwise are the rows sorted. Under ``torch.compile`` and ``torch.func`` the
rule runs inside the operator ``ksubset::limit`` (opaque to the compiler, so it neither breaks the graph nor
depends on the data at trace time), and always returns the limit fields (empty when nothing is extreme).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Limit", "limit_gap", "needed", "apply", "limit", "full_log_z", "log_prob_terms", "expected_terms"]


@dataclass
class Limit:
    """What the limit rule did to a ``[B, n]`` problem.

    Attributes:
        logits: ``[B, n]`` the caller's logits in the compute dtype (keeps the autograd link).
        shift: ``[B]`` the re-centring ``r`` subtracted from the remaining free logits (detached): the largest
            remaining free logit where that subtraction is exact (large logits), else 0; a value between the
            limit-forced and limit-removed ones when no free item remains.
        forced: ``[B, n]`` bool, items forced by the limit (also in ``Problem.forced``).
        removed: ``[B, n]`` bool, items made unavailable by the limit (still in ``Problem.available``).
    """

    logits: Tensor
    shift: Tensor
    forced: Tensor
    removed: Tensor

    @property
    def rows(self) -> Tensor:
        """``[B]`` bool, rows with at least one limit item."""
        return (self.forced | self.removed).any(-1)


def limit_gap(n: int, dtype: torch.dtype) -> float:
    """``G = -log(smallest subnormal of dtype) + log(2n)``: beyond it ``n e^{-G}`` rounds to 0 in ``dtype``."""
    fi = torch.finfo(dtype)
    return -math.log(fi.tiny) - math.log(fi.eps) + math.log(2 * max(n, 1))


def needed(x: Tensor, free: Tensor, all_free: bool, extent: tuple[float, float] | None = None) -> bool:
    """Whether any free logit of ``x [B, n]`` is beyond ``±G`` or the free logits span more than ``G`` (one
    reduction, one host sync).

    The span: a global one (over all rows) bounds every row's, so False is exact; True only means that the rows
    must be looked at. The magnitude: rows of large logits are re-centred (where that is exact), so that the
    engines never see them. Differences of finite floats overflow to ``+inf`` at worst (never NaN), which
    compares correctly with ``G``; with no free item the test is ``-inf > G``. ``extent``: the smallest and
    largest logit when every item is free and they are known already (no reduction, no sync).
    """
    if x.numel() == 0:
        return False
    if extent is not None:
        lo_f, hi_f = extent
        return max(hi_f - lo_f, hi_f, -lo_f) > limit_gap(x.shape[-1], x.dtype)
    if all_free:
        lo, hi = torch.aminmax(x)
    else:
        hi = torch.where(free, x, -math.inf).amax()
        lo = torch.where(free, x, math.inf).amin()
    beyond = torch.maximum(hi - lo, torch.maximum(hi, -lo))
    return beyond.item() > limit_gap(x.shape[-1], x.dtype)


def apply(x: Tensor, k: Tensor, free: Tensor, forced: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The limit rule on a canonical problem (vectorised over rows, no host sync).

    ``x [B, n]`` detached logits (finite on ``free``), ``k [B]`` free items to choose, ``free``/``forced``
    ``[B, n]`` bool. Returns ``(k', free', forced', limit_forced, limit_removed, shift)``: ``k' [B] = k -
    #limit_forced``, ``free'`` the remaining free items, ``forced' = forced | limit_forced``, and the re-centring
    ``shift [B]`` (see :class:`Limit`).
    """
    B, n = x.shape
    G = limit_gap(n, x.dtype)
    m = free.sum(-1, keepdim=True)
    t, order = torch.where(free, x, -math.inf).sort(-1, descending=True)  # free items first
    j = torch.arange(1, n, device=x.device)  # a gap after position j has j items above it
    # Both sides of the gap are free (j < m); t_j - t_{j+1} is >= 0 or +inf, never NaN there.
    decisive = (j < m) & (t[:, :-1] - t[:, 1:] > G)
    kk = k.unsqueeze(-1)
    j_forced = torch.where(decisive & (j <= kk), j, 0).amax(-1, keepdim=True) if n > 1 else m * 0
    j_removed = torch.where(decisive & (j >= kk), j, n).amin(-1, keepdim=True) if n > 1 else m
    j_removed = torch.minimum(j_removed, m)
    rank = torch.arange(n, device=x.device)
    lf = torch.zeros_like(free).scatter(-1, order, rank < j_forced)
    lr = torch.zeros_like(free).scatter(-1, order, (rank >= j_removed) & (rank < m))
    # The re-centring r: the largest logit below the forced block (the top remaining free item, else the top
    # removed one; the smallest forced one when nothing is below), so limit-forced logits are >= r and
    # limit-removed ones <= r. Applied only where subtracting it is exact for every remaining item (Sterbenz:
    # |r| >= 2 * their span; 4 * for the rounding of the span): elsewhere the remaining logits are moderate, and
    # rounding them in the compute dtype would cost the engines accuracy for nothing.
    top = t.gather(-1, torch.minimum(j_forced, (m - 1).clamp(min=0)))
    bottom = t.gather(-1, (j_removed - 1).clamp(min=0))
    exact = (j_removed == j_forced) | (top.abs() >= 4 * (top - bottom))
    shift = torch.where((m > 0) & exact, top, 0.0).squeeze(-1)
    return k - j_forced.squeeze(-1), free & ~lf & ~lr, forced | lf, lf, lr, shift


def _limit(x: Tensor, k: Tensor, free: Tensor, forced: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The operator's implementation: :func:`apply` when :func:`needed`, else the problem unchanged."""
    if needed(x, free, False):
        return apply(x, k, free, forced)
    none = torch.zeros_like(free)
    return k.clone(), free.clone(), forced.clone(), none, none.clone(), x.new_zeros(x.shape[:1])


limit = torch.library.custom_op("ksubset::limit", mutates_args=())(_limit)


@limit.register_fake
def _(x, k, free, forced):
    B, n = x.shape
    flags = [x.new_empty((B, n), dtype=torch.bool) for _ in range(4)]
    return k.new_empty((B,)), flags[0], flags[1], flags[2], flags[3], x.new_empty((B,))


def _limit_vmap(info, in_dims, x, k, free, forced):
    from .ops import _fold_rows, _unfold

    V = info.batch_size
    args = [_fold_rows(a, d, V) for a, d in zip((x, k, free, forced), in_dims, strict=True)]
    return tuple(_unfold(o, V) for o in limit(*args)), (0,) * 6


torch.library.register_vmap(limit, _limit_vmap)


def _scale(n: int) -> float:
    """``2^-s`` with ``2^s >= 2n``: a sum of ``n`` scaled finite floats cannot overflow (and scaling is exact)."""
    return 2.0 ** -(2 * max(n, 1)).bit_length()


def _two_sum_rows(t: Tensor) -> Tensor:
    """``sum(t, -1)`` to about twice the working precision, ``[B]`` (pairwise sums with Knuth's error-free
    TwoSum; the rounding errors are carried and added at the end). The terms must not overflow when added
    (callers pass them scaled). Differentiable: the derivative with respect to every term is exactly 1."""
    err = torch.zeros_like(t[..., 0])
    while t.shape[-1] > 1:
        if t.shape[-1] % 2:
            t = torch.cat([t, torch.zeros_like(t[..., :1])], -1)
        a, b = t[..., 0::2], t[..., 1::2]
        s = a + b
        bb = s - a
        err = err + ((a - (s - bb)) + (b - bb)).sum(-1)
        t = s
    return t[..., 0] + err


def full_log_z(lim: Limit, k: Tensor, log_z: Tensor) -> Tensor:
    """``sum_{limit-forced} x_i + k r + log_z`` per row, ``[B]``: ``log Z`` of the caller's logits from ``log_z``
    ``[B]`` of the remaining problem (``k [B]`` items to choose among logits re-centred by ``r``).

    Summed at ``2^-s`` scale (no intermediate ``inf - inf`` near ``finfo.max``; ``±inf`` only where the true value
    is beyond the dtype) and compensated (``finfo.max + 1e30 - finfo.max`` is ``1e30``); ``k r`` enters as the
    exact terms ``2^b r`` of ``k``'s binary digits. Differentiable in the caller's logits (derivative 1 on
    limit-forced items: they are in every k-subset).
    """
    x = lim.logits
    a = _scale(x.shape[-1])
    bits = torch.arange(max(x.shape[-1], 1).bit_length(), device=x.device)
    digits = ((k.unsqueeze(-1) >> bits) & 1).to(x.dtype)  # k = sum_b digits_b 2^b
    kr = digits * (2.0**bits).to(x.dtype) * (lim.shift * a).unsqueeze(-1)
    terms = torch.cat([torch.where(lim.forced, x, 0.0) * a, kr, (log_z * a).unsqueeze(-1)], -1)
    return _two_sum_rows(terms) / a


def _scaled_gaps(lim: Limit) -> Tensor:
    """``(x_i - r) 2^-s`` on limit items, 0 elsewhere, ``[B, n]``: finite even where ``x_i - r`` overflows.

    Zero (not ``±inf``) off the limit items, so that no ``0 * inf`` reaches a gradient.
    """
    x = lim.logits
    a = _scale(x.shape[-1])
    d = x * a - (lim.shift * a).unsqueeze(-1)
    return torch.where(lim.forced | lim.removed, d, 0.0)


def log_prob_terms(lim: Limit, z: Tensor, unflatten) -> Tensor:
    """``sum_{limit-forced} (x_i - r)(z_i - 1) + sum_{limit-removed} (x_i - r) z_i``, ``[..., *batch]``.

    With the re-centred remaining problem this completes ``log p(z)`` for any ``z`` on the support (0/1, ``k``
    ones among the available items), for any ``r``. Summed at ``2^-s`` scale, so no intermediate overflows and
    the result is the true value or ``-inf`` beyond the dtype, never NaN (when ``r`` is the top remaining logit
    every term is ``<= 0``; when it is 0 the remaining logits are moderate). ``z`` in the compute dtype,
    ``[..., *batch, n]``; ``unflatten`` maps ``[B, n]`` to ``[*batch, n]``.
    """
    d = unflatten(_scaled_gaps(lim))
    lf, lr = unflatten(lim.forced), unflatten(lim.removed)
    out = torch.where(lf & (z != 1), -d, 0.0) + torch.where(lr & (z != 0), d, 0.0)
    return out.sum(-1) / _scale(lim.logits.shape[-1])


def expected_terms(lim: Limit, mu: Tensor) -> Tensor:
    """The expectation of :func:`log_prob_terms` under marginals ``mu [B, n]``, ``[B]`` (never NaN)."""
    d = _scaled_gaps(lim)
    out = torch.where(lim.forced, d * (mu - 1), 0.0) + torch.where(lim.removed, d * mu, 0.0)
    return out.sum(-1) / _scale(lim.logits.shape[-1])
