"""SIMPLE (Ahmed et al., ICLR 2023): exact k-subset sample forward, exact-marginal Jacobian backward."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import sample_and_marginals
from ._common import check_generator, straight_through
from ._registry import register

__all__ = ["simple"]


def simple(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """An exact k-subset sample ``z [..., n]`` whose backward pass is ``Cov_theta(z) · dL/dz``.

    The forward value is a hard k-hot vector drawn exactly from ``p(z) ∝ exp(theta · z)``; the backward
    pass is the vector-Jacobian product of the exact marginals ``mu(theta)`` (no temperature, no noise in
    the backward pass). For ``k = 1`` this is a Gumbel-max forward with the softmax Jacobian backward.
    """
    check_generator(generator)
    z, mu = sample_and_marginals(logits, k, mask, generator=generator)
    return straight_through(z, mu)


register("simple", simple)
