"""The score-function (REINFORCE) estimator on exact k-subset samples and exact log-probabilities.

Unlike the pathwise estimators it needs the loss itself, not ``dL/dz``: ``score_function(logits, k, f)``
returns a *surrogate* ``[...]`` whose value is the Monte-Carlo estimate ``mean_s f(z_s)`` and whose gradient
with respect to the logits is the estimator::

    grad = (1/S) sum_s (f(z_s) - b_s) · d log p(z_s) / d logits,      z_1..z_S ~ p_theta exactly.

Baselines ``b_s`` (all keep the estimator unbiased):

* ``"none"`` — ``b_s = 0``;
* ``"leave_one_out"`` — ``b_s = mean_{j != s} f(z_j)``, the mean of the *other* samples (needs S >= 2);
  equivalently ``S/(S-1) · (f_s - mean f)``, the current sample never enters its own baseline;
* ``"mean"`` — ``b_s = mean_j f(z'_j)`` over ``S`` further, independent exact draws ``z'`` (so it works at
  S = 1, at the price of ``S`` more evaluations of ``f``). The naive batch mean *including* ``z_s``
  shrinks the estimate by ``(S-1)/S`` and is not offered.

``f`` maps samples ``z [S, *batch, n]`` (0/1, the logits' dtype) to ``[S, *batch]``. Gradients of the
surrogate also reach any parameters inside ``f`` (through ``mean_s f(z_s)``), so one backward pass trains
both; ``z`` itself carries no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import core
from ._common import BASELINES, check, score_surrogate
from ._registry import register

__all__ = ["score_function"]


def _check_score_function(*, num_samples, baseline) -> None:
    check.integer("score_function", "num_samples", num_samples, 1)
    check.choice("score_function", "baseline", baseline, BASELINES)
    if baseline == "leave_one_out" and num_samples < 2:
        raise ValueError("score_function: baseline='leave_one_out' needs num_samples >= 2")


def score_function(
    logits: Tensor,
    k: int | Tensor,
    f: Callable[[Tensor], Tensor],
    mask: Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    baseline: str = "none",
) -> Tensor:
    """Surrogate ``[...]`` (value ``mean_s f(z_s)``) whose gradient is the score-function estimate.

    Call ``.sum().backward()`` (or ``.mean()``) on it. See the module docstring for the baselines.
    """
    _check_score_function(num_samples=num_samples, baseline=baseline)
    return score_surrogate(
        f,
        lambda: core.sample(logits, k, mask, sample_shape=(num_samples,), generator=generator),
        lambda z: core.log_prob(logits, k, z, mask),
        num_samples,
        baseline,
    )


register("score_function", score_function, _check_score_function, pathwise=False)
