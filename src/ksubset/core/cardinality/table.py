"""Log-space count table: ``log Pr(S = j)``, ``j = 0..K``, for a sum ``S`` of independent 0/1 items.

Input: per-item log-weights of the two states, ``l0, l1 [B, n]`` (for Bernoulli(``p``) items,
``l0 = log(1 - p)`` and ``l1 = log p``; in general any real or ``-inf`` values, giving
``log e_j``-style sums). Output ``[B, K + 1]``: ``log sum_{|z| = j} exp(sum_i l_{z_i, i})``.

A balanced binary tree of truncated convolutions, each done in log space: the child vectors' outer sum is
reduced along its anti-diagonals by a log-sum-exp, so every entry keeps full relative precision at any
logit scale (no shared rescaling that could flush small entries). Work is ``O(nK)`` over the whole tree
(a node of ``m`` leaves holds ``min(m, K) + 1`` entries), depth ``log2 n``, no Python loop over items.

The table is differentiable by ordinary autograd (first and second derivatives, NaN-free at ``-inf``):
the derivatives with respect to ``l0`` and ``l1`` of a log-sum-exp over the root are the probabilities of
the two states of each item — sums of non-negative terms, so small marginals keep their relative precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["log_count_table", "safe_logsumexp", "softplus"]

#: Upper bound on the elements of one anti-diagonal temporary (chunks of nodes are processed in turn).
CHUNK_ELEMENTS = 1 << 22


def softplus(x: Tensor) -> Tensor:
    """``log(1 + e^x)`` to full precision for all real ``x`` and ``±inf`` (no threshold switch)."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def safe_logsumexp(x: Tensor, dim: int = -1) -> Tensor:
    """``logsumexp`` that is ``-inf`` on all-``-inf`` slices with NaN-free first and second derivatives.

    (``torch.logsumexp`` returns ``-inf`` there but its gradient is NaN.)
    """
    m = x.detach().amax(dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=x.dtype, device=x.device))
    s = torch.exp(x - m).sum(dim)
    out = m.squeeze(dim) + torch.log(s.clamp_min(torch.finfo(x.dtype).tiny))
    return torch.where(s > 0, out, torch.full((), -math.inf, dtype=x.dtype, device=x.device))


def _combine(left: Tensor, right: Tensor, out_len: int) -> Tensor:
    """``out[..., j] = logsumexp_i (left[..., i] + right[..., j - i])`` for ``j < out_len``.

    ``left, right: [B, M, L]`` → ``[B, M, out_len]``.
    """
    L = left.shape[-1]
    dev = left.device
    idx = torch.arange(out_len, device=dev)[:, None] - torch.arange(L, device=dev)[None, :]  # [J, L]
    valid = (idx >= 0) & (idx < L)
    idx = idx.clamp(0, L - 1)
    neg = torch.full((), -math.inf, dtype=left.dtype, device=dev)

    def run(sl: slice) -> Tensor:
        shifted = torch.where(valid, right[:, sl][..., idx], neg)  # [B, m, J, L]: right[j - i]
        return safe_logsumexp(left[:, sl].unsqueeze(-2) + shifted, dim=-1)

    M = left.shape[1]
    step = max(1, CHUNK_ELEMENTS // max(1, left.shape[0] * out_len * L))
    if step >= M:
        return run(slice(None))
    return torch.cat([run(slice(s, s + step)) for s in range(0, M, step)], dim=1)


def log_count_table(l0: Tensor, l1: Tensor, K: int) -> Tensor:
    """``[B, K + 1]`` log-weights of each count ``0..K`` (``-inf`` for counts above the item count)."""
    B, n = l0.shape
    N = 1 << max(0, (n - 1).bit_length())
    if N != n:  # padding items are never selected: weights (1, 0)
        l0 = F.pad(l0, (0, N - n), value=0.0)
        l1 = F.pad(l1, (0, N - n), value=-math.inf)
    v = torch.stack([l0, l1], dim=-1)[..., : K + 1]  # [B, N, <= 2]
    while v.shape[1] > 1:
        v = _combine(v[:, 0::2], v[:, 1::2], min(2 * v.shape[-1] - 1, K + 1))
    root = v[:, 0]
    if root.shape[-1] < K + 1:
        root = F.pad(root, (0, K + 1 - root.shape[-1]), value=-math.inf)
    return root
