"""Gumbel-softmax (Jang et al., 2017; Maddison et al., 2017) and its straight-through variant: k = 1 only.

``gumbel_softmax`` is ``softmax((theta + G) / tau)``; ``st_gumbel_softmax`` returns the one-hot
``argmax(theta + G)`` forward and the relaxed gradient backward. Both are the k = 1 case of
:mod:`.relaxed_topk` (one softmax step) and share its handling of masks and ``±inf`` logits. For k > 1 use
``relaxed_topk`` / ``st_relaxed_topk``; for an exact sample with the softmax Jacobian use ``simple``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import Canonical, canonical, check
from .relaxed_topk import _keys, _relax
from .simple import straight_through

__all__ = ["gumbel_softmax", "st_gumbel_softmax"]


def _check_gumbel(est: str, *, tau: float) -> None:
    check.positive(est, "tau", tau)


def _prepare_k1(est: str, logits: Tensor, k: int | Tensor, mask: Tensor | None) -> Canonical:
    if isinstance(k, Tensor):
        bad = k.numel() > 0 and not bool((k == 1).all())
    else:
        bad = k != 1
    if bad:
        raise ValueError(
            f"{est} is defined for k = 1 only (got k={k!r}); use relaxed_topk / st_relaxed_topk or simple "
            "for k-subsets"
        )
    return canonical(logits, k, mask)


def gumbel_softmax(
    logits: Tensor,
    k: int | Tensor = 1,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    tau: float = 1.0,
) -> Tensor:
    """``softmax((logits + G) / tau)``, ``[..., n]`` (sums to 1). ``k`` must be 1."""
    _check_gumbel("gumbel_softmax", tau=tau)
    C = _prepare_k1("gumbel_softmax", logits, k, mask)
    return C.unflatten(_relax(C, _keys(C, generator), tau))


def st_gumbel_softmax(
    logits: Tensor,
    k: int | Tensor = 1,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    tau: float = 1.0,
) -> Tensor:
    """One-hot ``argmax(logits + G)`` forward; the gradient of ``softmax((logits + G) / tau)`` backward."""
    _check_gumbel("st_gumbel_softmax", tau=tau)
    C = _prepare_k1("st_gumbel_softmax", logits, k, mask)
    keys = _keys(C, generator)
    soft = C.unflatten(_relax(C, keys, tau))
    hard = torch.zeros_like(keys)
    idx = torch.where(C.forced, float("inf"), keys.detach()).argmax(-1, keepdim=True)
    hard.scatter_(-1, idx, 1.0)
    return straight_through(C.unflatten(hard), soft)
