"""``CardinalitySubset``: count-constrained subsets as a ``torch.distributions.Distribution``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl
from torch.distributions.utils import lazy_property

from .core import cardinality as card
from .core._problem import check_logits, check_mask
from .distribution import KSubset
from .estimators.cardinality import simple as simple_counts

__all__ = ["CardinalitySubset"]

_EMPTY = torch.Size()


class CardinalitySubset(Distribution):
    """``p(z) ∝ exp(logits · z + phi[|z|])`` over ``z ∈ {0,1}^n``.

    Args:
        logits: ``[*batch, n]``; ``-inf`` = never selected, ``+inf`` = always selected.
        counts: an int (exactly k), an integer tensor, or a count constraint — ``ksubset.AtMost(k)``,
            ``ksubset.Between(a, b)``, ``ksubset.Exactly(k)``, ``ksubset.CountPotential(phi)`` (a learned
            count prior; gradients reach ``phi`` through ``log_prob``, ``entropy``, ``rsample``, ...).
        mask: optional ``[*batch, n]`` bool, True = available.

    ``batch_shape = logits.shape[:-1]``, ``event_shape = (n,)``. ``rsample`` is SIMPLE (exact sample, exact
    marginal Jacobian). :meth:`count_distribution` is the law of ``|z|``. KL with another
    ``CardinalitySubset`` or a ``KSubset`` on the same items is exact (``torch.distributions.kl_divergence``).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = True

    def __init__(self, logits: Tensor, counts, mask: Tensor | None = None, validate_args: bool | None = None):
        check_logits(logits)
        self.mask = check_mask(mask, logits)
        self.logits = logits
        self.counts = card.as_constraint(counts)
        card.problem.prepare_counts(logits, self.counts, self.mask)  # raises on impossible rows
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(CardinalitySubset, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.event_shape
        new.logits = self.logits.expand(shape)
        new.mask = None if self.mask is None else self.mask.expand(shape)
        new.counts = self.counts
        super(CardinalitySubset, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=_EMPTY, generator: torch.Generator | None = None) -> Tensor:
        return card.sample(self.logits, self.counts, self.mask, sample_shape=sample_shape, generator=generator)

    def rsample(self, sample_shape=_EMPTY, generator: torch.Generator | None = None) -> Tensor:
        shape = torch.Size(sample_shape)
        if len(shape) == 0:
            return simple_counts(self.logits, self.counts, self.mask, generator=generator)
        z = card.sample(self.logits, self.counts, self.mask, sample_shape=shape, generator=generator)
        mu = self.mean
        return z + (mu - mu.detach())  # exact draws; the gradient of each is the marginals' Jacobian

    def log_prob(self, value: Tensor) -> Tensor:
        lp = card.log_prob(self.logits, self.counts, value, self.mask)
        if self._validate_args and not bool((lp > float("-inf")).all()):
            raise ValueError("value is outside the support of this CardinalitySubset in some row")
        return lp

    def entropy(self) -> Tensor:
        return card.entropy(self.logits, self.counts, self.mask)

    @lazy_property
    def log_partition(self) -> Tensor:
        return card.log_partition(self.logits, self.counts, self.mask)

    def count_distribution(self) -> Tensor:
        """``Pr(|z| = j)``, ``[*batch, K + 1]``."""
        return card.count_distribution(self.logits, self.counts, self.mask)

    @property
    def mean(self) -> Tensor:
        return card.marginals(self.logits, self.counts, self.mask)

    @property
    def variance(self) -> Tensor:
        mu = self.mean
        return mu * (1 - mu)

    @property
    def mode(self) -> Tensor:
        return card.mode(self.logits, self.counts, self.mask)

    def __repr__(self) -> str:
        shape, n = tuple(self.batch_shape), self.event_shape[0]
        return f"CardinalitySubset(batch_shape={shape}, n={n}, counts={self.counts!r})"


def _masked(d) -> Tensor:
    return d.logits if d.mask is None else torch.where(d.mask, d.logits, float("-inf"))


def _counts(d):
    return card.Exactly(d.k) if isinstance(d, KSubset) else d.counts


@register_kl(CardinalitySubset, CardinalitySubset)
@register_kl(CardinalitySubset, KSubset)
@register_kl(KSubset, CardinalitySubset)
def _kl_cardinality(p, q) -> Tensor:
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL needs the same n, got {p.event_shape} and {q.event_shape}")
    return card.kl_divergence(_masked(p), _masked(q), _counts(p), q_counts=_counts(q))
