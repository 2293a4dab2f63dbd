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
from ._common import check

__all__ = ["score_function"]

_BASELINES = ("none", "mean", "leave_one_out")


def _check_score_function(*, num_samples, baseline) -> None:
    check.integer("score_function", "num_samples", num_samples, 1)
    check.choice("score_function", "baseline", baseline, _BASELINES)
    if baseline == "leave_one_out" and num_samples < 2:
        raise ValueError("score_function: baseline='leave_one_out' needs num_samples >= 2")


def _evaluate(f: Callable[[Tensor], Tensor], z: Tensor, expected: torch.Size) -> Tensor:
    out = f(z)
    if not isinstance(out, Tensor):
        raise TypeError(f"score_function: f must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != expected:
        raise ValueError(
            f"score_function: f must map z of shape {tuple(z.shape)} to shape {tuple(expected)} "
            f"(one value per sample and row), got {tuple(out.shape)}"
        )
    return out


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
    if not callable(f):
        raise TypeError(f"score_function: f must be callable, got {type(f).__name__}")
    S = num_samples
    z = core.sample(logits, k, mask, sample_shape=(S,), generator=generator)
    expected = z.shape[:-1]
    fz = _evaluate(f, z, expected)
    fd = fz.detach()
    if baseline == "none":
        adv = fd
    elif baseline == "leave_one_out":
        adv = fd - (fd.sum(0, keepdim=True) - fd) / (S - 1)
    else:
        z2 = core.sample(logits, k, mask, sample_shape=(S,), generator=generator)
        adv = fd - _evaluate(f, z2, expected).detach().mean(0, keepdim=True)
    logp = core.log_prob(logits, k, z, mask)
    score = logp - logp.detach()  # value 0, gradient d log p
    return fz.mean(0) + (adv.to(score.dtype) * score).mean(0).to(fz.dtype)
