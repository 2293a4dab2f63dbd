"""SoftSub: the relaxed top-k of Xie & Ermon (2019), and its straight-through variant.

With Gumbel-perturbed keys ``r = theta + G`` and ``temperature`` ``t``::

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

``t=`` is a deprecated alias of ``temperature``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import core
from ._common import check, k_total, perturbed_keys, renamed, soft_topk, straight_through, to_caller
from ._registry import register

__all__ = ["relaxed_topk", "st_relaxed_topk"]


def _check_relaxed(est: str, *, temperature: float) -> None:
    check.positive(est, "temperature", temperature)


@renamed(t="temperature")
def relaxed_topk(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Relaxed top-k of Gumbel-perturbed logits at ``temperature``; ``[..., n]``, non-negative, sums to k.

    Randomness: one standard Gumbel draw of shape ``[B, n]`` (``B`` the flattened batch) from ``generator``.
    """
    _check_relaxed("relaxed_topk", temperature=temperature)
    P = core.prepare(logits, k, mask)
    return to_caller(P, soft_topk(P, perturbed_keys(P, generator), temperature))


@renamed(t="temperature")
def st_relaxed_topk(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Hard top-k of the perturbed keys forward (exactly k ones); the gradient of :func:`relaxed_topk`.

    With the same generator state, the forward value is the ``temperature → 0`` limit of ``relaxed_topk``.
    """
    _check_relaxed("st_relaxed_topk", temperature=temperature)
    P = core.prepare(logits, k, mask)
    keys = perturbed_keys(P, generator)
    soft = to_caller(P, soft_topk(P, keys, temperature))
    hard_keys = torch.where(P.forced, float("inf"), keys.detach())
    hard = core.mode(to_caller(P, hard_keys), k_total(P).reshape(P.batch_shape))
    return straight_through(hard, soft)


register("relaxed_topk", relaxed_topk, functools.partial(_check_relaxed, "relaxed_topk"))
register("st_relaxed_topk", st_relaxed_topk, functools.partial(_check_relaxed, "st_relaxed_topk"))
