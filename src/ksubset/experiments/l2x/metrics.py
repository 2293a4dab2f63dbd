"""The metrics of E3 and of the L2X tabular sets, and the two reference selections (random, oracle)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["subset_precision", "median_rank", "random_selection", "oracle_selection"]


def subset_precision(selected: Tensor, rationale: Tensor, k: int | Tensor) -> float:
    """The original precision: selected tokens inside the spans / ``sum_rows max(#selected, k)``.

    ``selected`` and ``rationale`` are ``[N, L]`` (selected: 0/1 or bool), ``k`` an int or ``[N]``.
    """
    sel = selected.bool()
    if sel.shape != rationale.shape:
        raise ValueError(f"selected {tuple(sel.shape)} and rationale {tuple(rationale.shape)} differ in shape")
    count = sel.sum(-1)
    denom = torch.maximum(count, torch.as_tensor(k, dtype=count.dtype).expand_as(count)).sum()
    return float((sel & rationale).sum()) / max(float(denom), 1.0)


def median_rank(scores: Tensor, truth: Tensor) -> Tensor:
    """``[N]``: per row, the median rank (1 = highest score) of the true features ``truth [N, d]`` (bool).

    The L2X paper's metric; its ideal value for m true features is ``(m + 1) / 2``. Ties in the ranks of
    an even number of true features are averaged (the usual median).
    """
    order = scores.argsort(-1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(1, scores.shape[-1] + 1).expand_as(order).contiguous())
    out = torch.empty(scores.shape[0], dtype=torch.float64)
    for i in range(scores.shape[0]):
        out[i] = ranks[i][truth[i]].double().quantile(0.5)
    return out


def random_selection(mask: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``[N, L]`` 0/1: ``min(k, length)`` uniformly random real tokens per row (padding never)."""
    u = torch.rand(mask.shape, generator=generator)
    u = torch.where(mask, u, -1.0)
    kk = torch.clamp(mask.sum(-1), max=k)
    order = u.argsort(-1, descending=True).argsort(-1)
    return (order < kk[:, None]).float() * mask


def oracle_selection(rationale: Tensor, mask: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``[N, L]`` 0/1: ``min(k, length)`` tokens per row, annotated ones first (uniformly among them)."""
    u = torch.rand(mask.shape, generator=generator) + rationale.float() * 2.0
    u = torch.where(mask, u, -1.0)
    kk = torch.clamp(mask.sum(-1), max=k)
    order = u.argsort(-1, descending=True).argsort(-1)
    return (order < kk[:, None]).float() * mask
