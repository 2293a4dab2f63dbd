"""Estimators for count-constrained subsets ``p(z) ∝ exp(theta · z + phi[|z|])`` (``AtMost``, ``Between``,
``CountPotential``, ...): the ones whose construction carries over from exactly-k.

* :func:`simple` — exact sample forward; backward the vector-Jacobian product of the exact marginals:
  ``Cov(z) g`` for the logits and ``Cov(1[|z| = j], z · g)`` for a learned ``phi`` (both exact).
* :func:`ste` — exact sample forward, identity backward.
* :func:`score_function` — exact samples and exact ``log p(z)`` (gradients also reach ``phi``).
* :func:`imle` — perturb-and-MAP with MAP = the best count's top set (:func:`ksubset.core.cardinality.mode`):
  forward ``MAP(theta + eps)``, backward ``mean_s[MAP(theta + eps_s) - MAP(theta - lam g + eps_s)]``
  (``/ lam`` if ``scale``). Noise as in :func:`ksubset.estimators.imle` (``kappa=None`` = the constraint's
  largest count).

Same calling convention and hyper-parameters as the exactly-k estimators (checked by the same checks);
each is registered as the count-constraint version of its exactly-k namesake, so
:class:`ksubset.estimators.Estimator` dispatches here when ``k`` is a count constraint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core import cardinality as card
from ._common import custom_backward, draw_noise, renamed, score_surrogate, straight_through
from ._registry import register_counts, validate

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
    validate("score_function", num_samples=num_samples, baseline=baseline)
    return score_surrogate(
        f,
        lambda: card.sample(logits, counts, mask, sample_shape=(num_samples,), generator=generator),
        lambda z: card.log_prob(logits, counts, z, mask),
        num_samples,
        baseline,
    )


@renamed(tau="noise_scale")
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
    noise_scale: float = 1.0,
    num_samples: int = 1,
    scale: bool = False,
) -> Tensor:
    """I-MLE with the count-constrained MAP (best count, then its top set)."""
    validate("imle", lam=lam, noise=noise, kappa=kappa, s=s, noise_scale=noise_scale, num_samples=num_samples,
             scale=scale)
    P = card.problem.prepare_counts(logits, counts, mask)
    theta = logits.detach()
    kap = float(kappa) if kappa is not None else float(max(1, P.K_total))
    eps = draw_noise((num_samples, *logits.shape), noise=noise, kappa=kap, s=s, noise_scale=noise_scale,
                     dtype=P.theta.dtype, device=logits.device, generator=generator).to(theta.dtype)
    z_all = card.mode(theta + eps, counts, mask)

    def backward(g: Tensor) -> Tensor:
        z_target = card.mode(theta - lam * g.to(theta.dtype) + eps, counts, mask)
        grad = (z_all - z_target).mean(0)
        return grad / lam if scale else grad

    return custom_backward(logits, z_all[0], backward)


#: Registry names with a count-constraint version.
SUPPORTED: dict[str, Callable[..., Any]] = {
    "simple": simple, "ste": ste, "score_function": score_function, "imle": imle,
}
for _name, _fn in SUPPORTED.items():
    register_counts(_name, _fn)
