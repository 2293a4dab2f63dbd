"""The two SIMPLE ablations of Ahmed et al. (2023), whose backward passes need the incoming gradient ``g``.

* ``simple_f`` — forward an exact sample ``z ~ p_theta``; backward ``z - z'`` with ``z' ~ p_{theta - lam g}``
  drawn exactly (an I-MLE-style difference of two *exact* samples instead of two MAP states).
* ``simple_b`` — forward perturb-and-MAP ``z = topk(theta + eps)`` (sum-of-gamma or Gumbel noise); backward
  ``mu(theta) - mu(theta - lam g)`` with exact marginals.

Both follow the paper's ablation: no ``1/lam`` factor by default (``scale=True`` divides by ``lam``, which
makes ``simple_b`` tend to SIMPLE's ``Cov(z) g`` as ``lam → 0``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import core
from ._common import check, check_noise, custom_backward, draw_topk_noise, perturb, poison_rows, renamed
from ._registry import register

__all__ = ["simple_f", "simple_b"]


def _check_simple_f(*, lam: float, scale: bool) -> None:
    check.positive("simple_f", "lam", lam)
    check.boolean("simple_f", "scale", scale)


def simple_f(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    lam: float = 2.5,
    scale: bool = False,
) -> Tensor:
    """SIMPLE-F: exact sample ``z [..., n]`` forward; backward ``(z - z') [/ lam]``, ``z' ~ p_{theta - lam g}``.

    ``z'`` is drawn in the backward pass from ``generator`` (so the generator advances again then).
    """
    _check_simple_f(lam=lam, scale=scale)
    z = core.sample(logits, k, mask, generator=generator)
    theta = logits.detach().to(torch.promote_types(logits.dtype, torch.float32))  # half logits: in float32

    def backward(g: Tensor) -> Tensor:
        target, overflowed = perturb(theta, -lam * g.to(theta.dtype))
        z2 = core.sample(target, k, mask, generator=generator)
        grad = z.to(theta.dtype) - z2
        return poison_rows(grad / lam if scale else grad, overflowed)

    return custom_backward(logits, z, backward)


def _check_simple_b(*, lam, scale, noise, kappa, s, noise_scale) -> None:
    check.positive("simple_b", "lam", lam)
    check.boolean("simple_b", "scale", scale)
    check_noise("simple_b", noise=noise, kappa=kappa, s=s, noise_scale=noise_scale)


@renamed(tau="noise_scale")
def simple_b(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    lam: float = 2.5,
    scale: bool = False,
    noise: str = "sum_of_gamma",
    kappa: float | None = None,
    s: int = 10,
    noise_scale: float = 1.0,
) -> Tensor:
    """SIMPLE-B: ``topk(theta + eps)`` forward; backward ``(mu(theta) - mu(theta - lam g)) [/ lam]``.

    ``eps`` as in :func:`ksubset.estimators.imle` (``noise="sum_of_gamma"`` with ``kappa`` (default: each
    row's k), ``s``, ``noise_scale``; or ``noise="gumbel"``, ``noise_scale`` times standard Gumbel).
    ``tau=`` is a deprecated alias of ``noise_scale``.
    """
    _check_simple_b(lam=lam, scale=scale, noise=noise, kappa=kappa, s=s, noise_scale=noise_scale)
    P = core.prepare(logits, k, mask)
    theta = logits.detach().to(P.theta.dtype)  # compute dtype: float32 for half logits
    eps = draw_topk_noise(P, 1, noise=noise, kappa=kappa, s=s, noise_scale=noise_scale, generator=generator)[0]
    z = core.mode(theta + eps, k, mask)

    def backward(g: Tensor) -> Tensor:
        target, overflowed = perturb(theta, -lam * g.to(theta.dtype))
        mu = core.marginals(theta, k, mask)
        mu2 = core.marginals(target, k, mask)
        grad = mu - mu2
        return poison_rows(grad / lam if scale else grad, overflowed)

    return custom_backward(logits, z.to(logits.dtype), backward)


register("simple_f", simple_f, _check_simple_f)
register("simple_b", simple_b, _check_simple_b)
