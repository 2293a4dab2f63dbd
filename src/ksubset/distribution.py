"""``KSubset``: the k-subset distribution as a ``torch.distributions.Distribution``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl
from torch.distributions.utils import lazy_property

from . import core
from .core._problem import check_generator, check_k, check_logits, check_mask, prepare
from .estimators import simple

__all__ = ["KSubset", "KHot"]

_EMPTY = torch.Size()


class KHot(constraints.Constraint):
    """Binary vectors ``[..., n]`` with exactly ``k`` ones, all among the available items and on every forced one.

    Args:
        k: ``[*batch]`` integer tensor, the subset size per row.
        available: ``[*batch, n]`` bool, items that may be selected (mask True and logit not ``-inf``).
        forced: ``[*batch, n]`` bool, items that must be selected (``+inf`` logits).

    ``check(value [..., *batch, n]) -> [..., *batch]`` bool; ``value`` broadcasts against the batch.
    """

    is_discrete = True
    event_dim = 1

    def __init__(self, k: Tensor, available: Tensor, forced: Tensor) -> None:
        self.k = k
        self.available = available
        self.forced = forced
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        one = value == 1
        binary = (one | (value == 0)).all(-1)
        outside = (one & ~self.available).any(-1)  # a one on an item that cannot be selected
        missed = (self.forced & ~one).any(-1)  # a forced item left out
        return binary & ~outside & ~missed & (one.sum(-1) == self.k)

    def __repr__(self) -> str:
        ks = self.k.unique()
        k = int(ks[0]) if ks.numel() == 1 else "per-row"
        return f"KHot(k={k}, n={self.available.shape[-1]})"


class KSubset(Distribution):
    """Uniform-exponential-family distribution over k-hot vectors: ``p(z) ∝ exp(logits · z)``, ``|z| = k``.

    Args:
        logits: ``[*batch, n]`` real logits; ``-inf`` = never selected, ``+inf`` = always selected.
        k: int or integer tensor broadcastable to ``batch``, the subset size per row.
        mask: optional ``[*batch, n]`` bool, True = available (same as ``-inf`` logits where False).
        validate_args: as in ``torch.distributions``; when on, ``log_prob`` raises on values that are not
            k-subsets instead of returning ``-inf``.

    ``batch_shape = logits.shape[:-1]``, ``event_shape = (n,)``. ``rsample`` is SIMPLE: an exact sample whose
    gradient is the exact-marginal Jacobian. ``torch.distributions.kl_divergence`` is exact.
    """

    # logits may be ±inf (masked / forced items) but not NaN: constraints.real is exactly "not NaN"
    arg_constraints: dict = {
        "logits": constraints.independent(constraints.real, 1),
        "k": constraints.nonnegative_integer,
    }
    has_rsample = True

    def __init__(
        self,
        logits: Tensor,
        k: int | Tensor,
        mask: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        check_logits(logits)
        mask = check_mask(mask, logits)
        self.logits = logits
        self.mask = mask
        self.k = check_k(k, logits.shape[:-1], logits.device)
        prepare(logits, self.k, mask)  # raises on NaN, impossible k, too many forced items
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(KSubset, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.event_shape
        new.logits = self.logits.expand(shape)
        new.mask = None if self.mask is None else self.mask.expand(shape)
        new.k = self.k.expand(batch_shape)
        super(KSubset, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self) -> KHot:
        """The k-hot vectors of each row: exactly ``k`` ones among the available items, on every forced item."""
        logits = self._effective_logits
        available = logits != float("-inf")
        return KHot(self.k, available, available & (logits == float("inf")))

    @property
    def _effective_logits(self) -> Tensor:
        """Logits with the mask folded in as ``-inf`` (the gradient still reaches available items)."""
        if self.mask is None:
            return self.logits
        return torch.where(self.mask, self.logits, float("-inf"))

    def sample(self, sample_shape=_EMPTY, generator: torch.Generator | None = None) -> Tensor:
        check_generator(generator)
        return core.sample(self.logits, self.k, self.mask, sample_shape=sample_shape, generator=generator)

    def rsample(self, sample_shape=_EMPTY, generator: torch.Generator | None = None) -> Tensor:
        check_generator(generator)
        if isinstance(sample_shape, int):  # as sample(): an int n means (n,)
            sample_shape = (sample_shape,)
        shape = torch.Size(sample_shape) + self.logits.shape
        batch = torch.Size(sample_shape) + self.batch_shape
        mask = None if self.mask is None else self.mask.expand(shape)
        return simple(self.logits.expand(shape), self.k.expand(batch), mask, generator=generator)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args and isinstance(value, Tensor) and value.shape[-1:] == self.event_shape:
            try:
                ok = self.support.check(value)
            except RuntimeError:  # value does not broadcast: core.log_prob names the shapes
                ok = None
            if ok is not None and not bool(ok.all()):
                where = f" (first at index {tuple(torch.nonzero(~ok)[0].tolist())})" if ok.dim() else ""
                raise ValueError(
                    f"value is not a k-subset of the available items{where}: KSubset.support is {self.support}, "
                    "binary vectors with exactly k ones among the available items, including every +inf item"
                )
        return core.log_prob(self.logits, self.k, value, self.mask, validate=bool(self._validate_args))

    def entropy(self) -> Tensor:
        return core.entropy(self.logits, self.k, self.mask)

    @lazy_property
    def log_partition(self) -> Tensor:
        """``log e_k(exp logits)`` per row, ``batch_shape``."""
        return core.log_partition(self.logits, self.k, self.mask)

    @property
    def mean(self) -> Tensor:
        return core.marginals(self.logits, self.k, self.mask)

    @property
    def variance(self) -> Tensor:
        mu = self.mean
        return mu * (1 - mu)

    @property
    def mode(self) -> Tensor:
        return core.mode(self.logits, self.k, self.mask)

    def __repr__(self) -> str:
        return f"KSubset(batch_shape={tuple(self.batch_shape)}, n={self.event_shape[0]})"


@register_kl(KSubset, KSubset)
def _kl_ksubset(p: KSubset, q: KSubset) -> Tensor:
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL between KSubsets needs the same n, got {p.event_shape} and {q.event_shape}")
    if p.k.shape != q.k.shape or not bool((p.k == q.k).all()):
        raise ValueError("KL between KSubsets needs the same k in every row")
    return core.kl_divergence(p._effective_logits, q._effective_logits, p.k)
