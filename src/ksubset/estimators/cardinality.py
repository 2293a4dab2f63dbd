"""Estimators for count-constrained subsets ``p(z) ∝ exp(theta · z + phi[|z|])`` (``AtMost``, ``Between``,
``CountPotential``, ...): the ones whose construction carries over from exactly-k.

* :func:`simple` — exact sample forward; backward the vector-Jacobian product of the exact marginals:
  ``Cov(z) g`` for the logits and ``Cov(1[|z| = j], z · g)`` for a learned ``phi`` (both exact).
* :func:`ste` — exact sample forward, identity backward.
* :func:`score_function` — exact samples and exact ``log p(z)`` (gradients also reach ``phi``).
* :func:`imle` — perturb-and-MAP with MAP = the best count's top set (:func:`ksubset.core.cardinality.mode`):
  forward ``MAP(theta + eps)``, backward ``mean_s[MAP(theta + eps_s) - MAP(theta - lam g + eps_s)]``
  (``/ lam`` if ``scale``). Noise as in :mod:`.imle` (``kappa=None`` = the constraint's largest count).

Same calling convention as the exactly-k estimators; :class:`ksubset.estimators.Estimator` dispatches here
when ``k`` is a count constraint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..core import cardinality as card
from ._common import custom_backward
from .imle import _check_imle
from .noise import gumbel_noise, sum_of_gamma_noise
from .score_function import _check_score_function, _evaluate
from .simple import straight_through

__all__ = ["simple", "ste", "score_function", "imle", "SUPPORTED"]


def simple(logits: Tensor, counts, mask: Tensor | None = None, *, generator: torch.Generator | None = None):
    """SIMPLE for count constraints: exact draw ``z [..., n]``; gradient ``Cov(z) g`` (and the exact
    gradient for ``CountPotential``'s phi)."""
    z, mu = card.sample_and_marginals(logits, counts, mask, generator=generator)
    return straight_through(z, mu)


def ste(logits: Tensor, counts, mask: Tensor | None = None, *, generator: torch.Generator | None = None):
    """Exact draw forward; identity backward on the available, non-forced items."""
    P = card.problem.prepare_counts(logits, counts, mask)
    z = card.sample(logits, counts, mask, generator=generator)
    surrogate = torch.where(P.free, P.theta, 0.0).reshape(logits.shape).to(logits.dtype)
    return straight_through(z, surrogate)


def score_function(
    logits: Tensor,
    counts,
    f: Callable[[Tensor], Tensor],
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    baseline: str = "none",
) -> Tensor:
    """Surrogate ``[...]`` (value ``mean_s f(z_s)``) whose gradient is the score-function estimate; the
    baselines are those of :func:`ksubset.estimators.score_function`."""
    _check_score_function(num_samples=num_samples, baseline=baseline)
    if not callable(f):
        raise TypeError(f"score_function: f must be callable, got {type(f).__name__}")
    S = num_samples
    z = card.sample(logits, counts, mask, sample_shape=(S,), generator=generator)
    fz = _evaluate(f, z, z.shape[:-1])
    fd = fz.detach()
    if baseline == "none":
        adv = fd
    elif baseline == "leave_one_out":
        adv = fd - (fd.sum(0, keepdim=True) - fd) / (S - 1)
    else:
        z2 = card.sample(logits, counts, mask, sample_shape=(S,), generator=generator)
        adv = fd - _evaluate(f, z2, z.shape[:-1]).detach().mean(0, keepdim=True)
    logp = card.log_prob(logits, counts, z, mask)
    score = logp - logp.detach()
    return fz.mean(0) + (adv.to(score.dtype) * score).mean(0).to(fz.dtype)


def imle(
    logits: Tensor,
    counts,
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    lam: float = 2.5,
    noise: str = "sum_of_gamma",
    kappa: float | None = None,
    s: int = 10,
    tau: float = 1.0,
    num_samples: int = 1,
    scale: bool = False,
) -> Tensor:
    """I-MLE with the count-constrained MAP (best count, then its top set)."""
    _check_imle(lam=lam, noise=noise, kappa=kappa, s=s, tau=tau, num_samples=num_samples, scale=scale)
    P = card.problem.prepare_counts(logits, counts, mask)
    theta = logits.detach()
    dt = P.theta.dtype
    shape = (num_samples, *logits.shape)
    if noise == "gumbel":
        eps = tau * gumbel_noise(shape, dtype=dt, device=logits.device, generator=generator)
    else:
        kap = float(kappa) if kappa is not None else float(max(1, P.K_total))
        eps = sum_of_gamma_noise(shape, kap, s=s, tau=tau, dtype=dt, device=logits.device, generator=generator)
    eps = eps.to(theta.dtype)
    z_all = card.mode(theta + eps, counts, mask)

    def backward(g: Tensor) -> Tensor:
        z_target = card.mode(theta - lam * g.to(theta.dtype) + eps, counts, mask)
        grad = (z_all - z_target).mean(0)
        return grad / lam if scale else grad

    return custom_backward(logits, z_all[0], backward)


#: Registry names with a count-constraint version (used by :class:`ksubset.estimators.Estimator`).
SUPPORTED = {"simple": simple, "ste": ste, "score_function": score_function, "imle": imle}
