"""Straight-through estimator (Bengio et al., 2013) on an exact k-subset sample."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import core
from ._common import canonical
from .simple import straight_through

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
    C = canonical(logits, k, mask)
    z = core.sample(logits, k, mask, generator=generator)
    surrogate = torch.where(C.free, C.theta, torch.zeros((), dtype=C.theta.dtype, device=C.theta.device))
    return straight_through(z, C.unflatten(surrogate))
