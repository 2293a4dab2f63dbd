"""SoftSub: the relaxed top-k of Xie & Ermon (2019), and its straight-through variant.

With Gumbel-perturbed keys ``r = theta + G`` and temperature ``t``::

    alpha^1 = r;   a^j = softmax(alpha^j / t);   alpha^{j+1} = alpha^j + log(1 - a^j)   (j = 1..k)
    output  = sum_j a^j

Each softmax sums to 1, so the output sums to exactly k; as ``t → 0`` it tends to the top-k indicator of
the *same* perturbed keys ``r``. ``st_relaxed_topk`` returns that hard top-k in the forward pass and the
relaxed output's gradient in the backward pass.

Entries are not bounded by 1: the soft mask ``log(1 - a)`` of a chosen item is about ``-(gap to the
runner-up)/t``, which may leave it above the next items when the keys' gaps are large compared with ``t``
(always for ``t > 1``), and it is then chosen again — the algorithm as published (Xie & Ermon's Algorithm 2
and code). Where ``a`` rounds to 1, ``log(1 - a)`` is taken as ``-inf`` (the exact limit; no gradient
through that branch) instead of clamping ``1 - a`` to a tiny number.

Masks and extreme logits: masked-out and ``-inf`` items get key ``-inf`` (output 0, no gradient); ``+inf``
items are always selected (output 1, no gradient) and reduce the row's k. Per-row k: the recursion runs
``max(k)`` steps and each row adds only its first ``k_row`` softmaxes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import core
from ._common import Canonical, canonical, check
from .noise import gumbel_noise
from .simple import straight_through

__all__ = ["relaxed_topk", "st_relaxed_topk"]


def _check_relaxed(est: str, *, t: float) -> None:
    check.positive(est, "t", t)


def _keys(C: Canonical, generator: torch.Generator | None) -> Tensor:
    """Perturbed keys ``theta + G`` on the free items, ``-inf`` elsewhere, ``[B, n]`` (grad-linked)."""
    G = gumbel_noise(C.theta.shape, dtype=C.theta.dtype, device=C.theta.device, generator=generator)
    return C.theta + G


def _relax(C: Canonical, keys: Tensor, t: float) -> Tensor:
    """``sum_j a^j`` over each row's ``k_free`` steps plus the forced items, ``[B, n]`` compute dtype."""
    dt, dev = keys.dtype, keys.device
    zero = torch.zeros((), dtype=dt, device=dev)
    # Rows with no free item (k_free = 0 there) would give softmax(all -inf) = NaN: use zeros instead.
    alpha = torch.where(C.free.any(-1, keepdim=True), keys, zero)
    K = int(C.k_free.max()) if C.k_free.numel() else 0
    # Keep the output on the autograd graph even with no softmax step (k = 0 everywhere, or an empty batch):
    # its gradient is then zero (of the logits' shape) instead of an error in backward().
    out = C.forced.to(dt) + (torch.where(C.free, alpha, zero) * 0 if K == 0 else 0)
    for j in range(K):
        a = torch.softmax(alpha / t, dim=-1)
        out = out + torch.where((j < C.k_free).unsqueeze(-1), a, zero)
        if j + 1 < K:
            rest = 1 - a
            pos = rest > 0
            log_rest = torch.where(pos, torch.log(torch.where(pos, rest, 1.0)), float("-inf"))
            # Update only rows with a step left: a row with all its free items chosen stays finite.
            alpha = torch.where((j + 1 < C.k_free).unsqueeze(-1), alpha + log_rest, alpha)
    return out


def relaxed_topk(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    t: float = 1.0,
) -> Tensor:
    """Relaxed top-k of Gumbel-perturbed logits at temperature ``t``; ``[..., n]`` in ``[0, 1]``, sums to k.

    Randomness: one standard Gumbel draw of shape ``[B, n]`` (``B`` the flattened batch) from ``generator``.
    """
    _check_relaxed("relaxed_topk", t=t)
    C = canonical(logits, k, mask)
    return C.unflatten(_relax(C, _keys(C, generator), t))


def st_relaxed_topk(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    t: float = 1.0,
) -> Tensor:
    """Hard top-k of the perturbed keys forward (exactly k ones); the gradient of :func:`relaxed_topk`.

    With the same generator state, the forward value is the ``t → 0`` limit of ``relaxed_topk``.
    """
    _check_relaxed("st_relaxed_topk", t=t)
    C = canonical(logits, k, mask)
    keys = _keys(C, generator)
    soft = C.unflatten(_relax(C, keys, t))
    hard_keys = torch.where(C.forced, float("inf"), keys.detach())
    hard = core.mode(C.unflatten(hard_keys), C.k_full.reshape(C.batch_shape))
    return straight_through(hard, soft)
