"""Gumbel-softmax (Jang et al., 2017; Maddison et al., 2017) and its straight-through variant: k = 1 only.

``gumbel_softmax`` is ``softmax((theta + G) / temperature)``; ``st_gumbel_softmax`` returns the one-hot
``argmax(theta + G)`` forward and the relaxed gradient backward. Both are the k = 1 case of the relaxed top-k
(one softmax step, :func:`._common.soft_topk`) and share its handling of masks and ``±inf`` logits. For k > 1
use ``relaxed_topk`` / ``st_relaxed_topk``; for an exact sample with the softmax Jacobian use ``simple``.

``tau=`` is a deprecated alias of ``temperature``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .. import core
from ._common import check, perturbed_keys, renamed, soft_topk, straight_through, to_caller
from ._registry import register

__all__ = ["gumbel_softmax", "st_gumbel_softmax"]


def _check_gumbel(est: str, *, temperature: float) -> None:
    check.positive(est, "temperature", temperature)


def _prepare_k1(est: str, logits: Tensor, k: int | Tensor, mask: Tensor | None) -> core.Problem:
    if isinstance(k, Tensor):
        bad = k.numel() > 0 and not bool((k == 1).all())
    else:
        bad = k != 1
    if bad:
        raise ValueError(
            f"{est} is defined for k = 1 only (got k={k!r}); use relaxed_topk / st_relaxed_topk or simple "
            "for k-subsets"
        )
    return core.prepare(logits, k, mask)


@renamed(tau="temperature")
def gumbel_softmax(
    logits: Tensor,
    k: int | Tensor = 1,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """``softmax((logits + G) / temperature)``, ``[..., n]`` (sums to 1). ``k`` must be 1."""
    _check_gumbel("gumbel_softmax", temperature=temperature)
    P = _prepare_k1("gumbel_softmax", logits, k, mask)
    return to_caller(P, soft_topk(P, perturbed_keys(P, generator), temperature))


@renamed(tau="temperature")
def st_gumbel_softmax(
    logits: Tensor,
    k: int | Tensor = 1,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """One-hot ``argmax(logits + G)`` forward; the gradient of ``softmax((logits + G) / temperature)`` backward."""
    _check_gumbel("st_gumbel_softmax", temperature=temperature)
    P = _prepare_k1("st_gumbel_softmax", logits, k, mask)
    keys = perturbed_keys(P, generator)
    soft = to_caller(P, soft_topk(P, keys, temperature))
    hard = torch.zeros_like(keys)
    idx = torch.where(P.forced, float("inf"), keys.detach()).argmax(-1, keepdim=True)
    hard.scatter_(-1, idx, 1.0)
    return straight_through(to_caller(P, hard), soft)


register("gumbel_softmax", gumbel_softmax, functools.partial(_check_gumbel, "gumbel_softmax"))
register("st_gumbel_softmax", st_gumbel_softmax, functools.partial(_check_gumbel, "st_gumbel_softmax"))
