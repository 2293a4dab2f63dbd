"""The official code's KL term (the "official metric"), exactly as it computed it.

The original implementation computed a block's entropy with the recurrence over the forward table
``a[i][l] = Pr(z_1 + … + z_i = l)`` (1-based items)::

    pi_{i,l} = p_i a[i-1][l-1] / a[i][l]                    (= Pr(z_i = 1 | z_1 + … + z_i = l))
    H_i(l)   = h(pi_{i,l}) + pi_{i,l} H_{i-1}(l-1) + (1 - pi_{i,l}) H_{i-1}(l)

with ``h`` the binary entropy — but ran it for ``i = 10 … n`` only, starting from ``H ≡ 0``. By the chain rule
that is the entropy of the last ``n − 9`` items, ``H(z_10, …, z_n)``, not ``H(z)``; its KL per block was
``log C(n, k) − max(H, 0)``, an over-estimate. :func:`official_kl` reproduces it (``start=10``); with
``start=1`` the same recurrence gives the exact entropy, which the tests use as a check.

Everything runs in log space on ``logits [..., n]`` (the table ``a`` is the elementary symmetric polynomial
of ``exp(logits)`` up to a per-row factor that cancels in ``pi``) and is differentiable, so the official
reproduction can train with it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["OFFICIAL_START", "official_entropy", "official_kl"]

#: the (1-based) item at which the official entropy loop started
OFFICIAL_START = 10


def _empty(logits: Tensor) -> float:
    """A finite stand-in for ``log 0``: ``-inf`` would turn the backward of ``logaddexp(-inf, -inf)`` into NaN."""
    return torch.finfo(logits.dtype).min / 64


def _log_forward_table(logits: Tensor, k: int) -> list[Tensor]:
    """``log a[i][l]`` for ``i = 0..n`` as a list of ``[..., k+1]`` tensors (unnormalised, ``l = 0..k``).

    Impossible counts (``l > i``) hold the finite stand-in :func:`_empty` instead of ``-inf``.
    """
    neg_inf = torch.full(logits.shape[:-1] + (k + 1,), _empty(logits), dtype=logits.dtype, device=logits.device)
    table = [torch.cat([torch.zeros_like(neg_inf[..., :1]), neg_inf[..., 1:]], -1)]
    for i in range(logits.shape[-1]):
        prev = table[-1]
        shifted = torch.cat([neg_inf[..., :1], prev[..., :-1]], -1) + logits[..., i : i + 1]
        table.append(torch.logaddexp(prev, shifted))
    return table


def official_entropy(logits: Tensor, k: int, start: int = OFFICIAL_START) -> Tensor:
    """The recurrence's ``H_n(k)`` started at the 1-based item ``start`` from ``H ≡ 0``: ``[..., n]`` → ``[...]``.

    ``start=1`` gives the exact entropy of the k-subset distribution; ``start=10`` the official code's value.
    """
    n = logits.shape[-1]
    if not 1 <= start <= n:
        raise ValueError(f"start must be in 1..{n}, got {start}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..{n}, got {k}")
    la = _log_forward_table(logits, k)
    empty = _empty(logits)
    neg_inf = torch.full_like(la[0][..., :1], empty)
    H = torch.zeros_like(la[0])
    for i in range(start, n + 1):
        prev, cur = la[i - 1], la[i]
        feasible = cur > empty / 2
        safe_cur = torch.where(feasible, cur, torch.zeros_like(cur))
        # log pi and log(1 - pi), both exact in log space (no 1 - pi cancellation)
        log_pi = torch.cat([neg_inf, prev[..., :-1]], -1) + logits[..., i - 1 : i] - safe_cur
        log_not = prev - safe_cur
        pi, not_pi = log_pi.exp(), log_not.exp()
        # 0 log 0 = 0, with the log replaced where p = 0 so that no inf * 0 reaches the backward pass
        h = -(pi * torch.where(pi > 0, log_pi, 0.0) + not_pi * torch.where(not_pi > 0, log_not, 0.0))
        H_down = torch.cat([torch.zeros_like(H[..., :1]), H[..., :-1]], -1)
        H = torch.where(feasible, h + pi * H_down + not_pi * H, torch.zeros_like(H))
    return H[..., k]


def official_kl(logits: Tensor, k: int, start: int = OFFICIAL_START) -> Tensor:
    """The official code's KL to the uniform prior per block: ``log C(n, k) − max(H_official, 0)``, ``[...]``."""
    n = logits.shape[-1]
    return math.log(math.comb(n, k)) - official_entropy(logits, k, start).clamp_min(0.0)
