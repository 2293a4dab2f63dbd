"""The exact gradient of ``E_{z ~ p_theta}[f(z)]`` by enumerating every k-subset (the test oracle).

``grad = sum_z p(z) f(z) (z - mu) = Cov(z, f(z))``, accumulated in float64 over all ``C(n, k)`` subsets
(of every k that occurs in the batch; ``p(z) = 0`` off a row's support, so masks, ``±inf`` logits and
per-row k are respected). Refuses ``n > 20``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .. import core

__all__ = ["exact_expectation", "exact_gradient", "MAX_ENUMERATION_N"]

MAX_ENUMERATION_N = 20
_CHUNK_ELEMENTS = 1 << 22  # subsets × rows × items per evaluation of f


def _subsets(n: int, k: int, device: torch.device) -> Tensor:
    """All k-subsets of n items as 0/1 rows ``[C(n, k), n]`` (float64), in lexicographic order."""
    if k == 0:
        return torch.zeros(1, n, dtype=torch.float64, device=device)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)), dtype=np.int64)
    idx = torch.from_numpy(flat.reshape(-1, k)).to(device)
    z = torch.zeros(idx.shape[0], n, dtype=torch.float64, device=device)
    return z.scatter_(1, idx, 1.0)


def _enumerate(name: str, logits: Tensor, k: int | Tensor, f: Callable[[Tensor], Tensor], mask):
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if not callable(f):
        raise TypeError(f"{name}: f must be callable, got {type(f).__name__}")
    n = logits.shape[-1] if logits.dim() else 0
    if n > MAX_ENUMERATION_N:
        raise ValueError(
            f"{name} enumerates all C(n, k) subsets and supports n <= {MAX_ENUMERATION_N} items, got n={n}; "
            "use an unbiased estimate (ksubset.estimators.score_function) instead"
        )
    core.mode(logits.detach(), k, mask)  # validates (logits, k, mask) with the core's messages
    theta = logits.detach().to(torch.float64)
    batch = theta.shape[:-1]
    B = int(np.prod(batch)) if len(batch) else 1
    dev = theta.device
    ks = torch.as_tensor(k, device=dev).to(torch.int64).expand(batch)
    E = torch.zeros(batch, dtype=torch.float64, device=dev)
    Epz = torch.zeros(*batch, n, dtype=torch.float64, device=dev)
    mu = torch.zeros(*batch, n, dtype=torch.float64, device=dev)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, B * n))
    for kv in torch.unique(ks).tolist():
        Z = _subsets(n, int(kv), dev)
        for start in range(0, Z.shape[0], chunk):
            zc = Z[start : start + chunk]
            zb = zc.reshape(-1, *([1] * len(batch)), n).expand(-1, *batch, n)
            logp = core.log_prob(theta, k, zb, mask)  # -inf off each row's support
            p = torch.exp(logp)
            fz = f(zb.to(logits.dtype))
            if not isinstance(fz, Tensor):
                raise TypeError(f"{name}: f must return a torch.Tensor, got {type(fz).__name__}")
            fz = torch.broadcast_to(fz.detach().to(torch.float64), p.shape)
            pf = torch.where(p > 0, p * fz, torch.zeros((), dtype=torch.float64, device=dev))
            E = E + pf.sum(0)
            Epz = Epz + torch.einsum("m...,mn->...n", pf, zc)
            mu = mu + torch.einsum("m...,mn->...n", p, zc)
    grad = Epz - E.unsqueeze(-1) * mu
    return E, grad


def exact_expectation(
    logits: Tensor, k: int | Tensor, f: Callable[[Tensor], Tensor], mask: Tensor | None = None
) -> Tensor:
    """``E[f(z)]`` per row, ``[...]``, by enumeration (n <= 20); not differentiable.

    ``f`` maps ``z [M, *batch, n]`` (0/1 in the logits' dtype) to ``[M, *batch]`` (or broadcastable).
    """
    E, _ = _enumerate("exact_expectation", logits, k, f, mask)
    return E.to(logits.dtype)


def exact_gradient(
    logits: Tensor, k: int | Tensor, f: Callable[[Tensor], Tensor], mask: Tensor | None = None
) -> Tensor:
    """The exact gradient of ``E[f(z)]`` with respect to the logits, ``[..., n]``, by enumeration (n <= 20).

    Computed in float64 and returned in the logits' dtype; masked-out and ``±inf`` items get 0. ``f`` maps
    ``z [M, *batch, n]`` to ``[M, *batch]`` and is treated as a constant of the logits.
    """
    _, grad = _enumerate("exact_gradient", logits, k, f, mask)
    return grad.to(logits.dtype)
