"""Straight-through estimator (Bengio et al., 2013) on an exact k-subset sample."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import core
from ._common import straight_through, to_caller
from ._registry import register

__all__ = ["ste"]


def ste(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """An exact sample ``z [..., n]``; the backward pass is the identity, ``dL/dlogits = dL/dz``.

    Masked-out and forced (``±inf``) items receive zero gradient.
    """
    P = core.prepare(logits, k, mask)
    z = core.sample(logits, k, mask, generator=generator)
    surrogate = torch.where(P.free, P.theta, torch.zeros((), dtype=P.theta.dtype, device=P.theta.device))
    return straight_through(z, to_caller(P, surrogate))


register("ste", ste)
