"""SIMPLE-FD: the finite-difference form of SIMPLE's backward pass in the original SIMPLE code.

Forward an exact k-subset sample ``z ~ p_theta``; backward ``mu(theta) - mu(theta - lam g)`` with exact
marginals ``mu`` — a finite difference of the marginals along ``-g`` that tends to ``lam Cov(z) g`` (SIMPLE's
backward times ``lam``) as ``lam → 0``. The original code used this form without the ``1/lam`` factor
(``scale=False``, the default here); ``scale=True`` divides by ``lam``.

It differs from ``simple_b`` only in the forward pass: ``simple_b`` forwards a perturb-and-MAP state, this
estimator an exact sample (so the forward follows the k-subset law, as SIMPLE's does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import core
from ._common import check, custom_backward, perturb, poison_rows
from ._registry import register

__all__ = ["simple_fd"]


def _check_simple_fd(*, lam: float, scale: bool) -> None:
    check.positive("simple_fd", "lam", lam)
    check.boolean("simple_fd", "scale", scale)


def simple_fd(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    lam: float = 10.0,
    scale: bool = False,
) -> Tensor:
    """Exact sample ``z [..., n]`` forward; backward ``(mu(theta) - mu(theta - lam g)) [/ lam]``.

    ``lam`` defaults to 10, the value the sparse-regression experiment of the original code used. Rows whose
    incoming gradient is not finite, or whose step ``theta - lam g`` overflows, get a NaN gradient (so that a
    mixed-precision loss scaler skips the step).
    """
    _check_simple_fd(lam=lam, scale=scale)
    z = core.sample(logits, k, mask, generator=generator)
    theta = logits.detach().to(torch.promote_types(logits.dtype, torch.float32))  # half logits: in float32

    def backward(g: Tensor) -> Tensor:
        target, overflowed = perturb(theta, -lam * g.to(theta.dtype))
        grad = core.marginals(theta, k, mask) - core.marginals(target, k, mask)
        return poison_rows(grad / lam if scale else grad, overflowed)

    return custom_backward(logits, z, backward)


register("simple_fd", simple_fd, _check_simple_fd)
