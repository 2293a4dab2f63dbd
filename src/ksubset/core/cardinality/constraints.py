"""Count constraints: what the size ``|z|`` of a subset may be, as log-potentials over counts.

A constraint turns into ``phi [*batch, K + 1]``, the log-potential of each total count ``j = 0..K``
(``-inf`` = the count is forbidden, counts above ``K`` are forbidden), so that

    p(z) ∝ exp(theta · z + phi[|z|]).

``Exactly(k)`` is ``phi = 0`` at ``k`` and ``-inf`` elsewhere (the plain k-subset distribution), ``AtMost(k)``
is ``0`` on ``0..k``, ``Between(a, b)`` is ``0`` on ``a..b`` and ``CountPotential(phi)`` takes any real
log-potentials (a learned prior over the count: gradients reach ``phi``). A plain int or integer tensor means
``Exactly``. Every bound may be an int or an integer tensor broadcastable to the batch shape (per row).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CountConstraint", "Exactly", "AtMost", "Between", "CountPotential", "as_constraint"]


def _bound(value: object, what: str) -> int | Tensor:
    """An int >= 0 or an integer tensor (checked for >= 0), as given."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int or an integer tensor, got bool")
    if isinstance(value, numbers.Integral):
        if int(value) < 0:
            raise ValueError(f"{what} must be >= 0, got {int(value)}")
        return int(value)
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise TypeError(f"{what} must be an int or an integer tensor, got a tensor of dtype {value.dtype}")
        if value.numel() and int(value.min()) < 0:
            raise ValueError(f"{what} must be >= 0 in every row, got a minimum of {int(value.min())}")
        return value
    raise TypeError(f"{what} must be an int or an integer tensor, got {type(value).__name__}")


def _as_rows(value: int | Tensor, batch_shape: torch.Size, device, what: str) -> Tensor:
    """``value`` as an int64 tensor of shape ``batch_shape``."""
    t = torch.as_tensor(value, dtype=torch.int64, device=device)
    try:
        return t.expand(batch_shape)
    except RuntimeError:
        raise ValueError(
            f"{what} of shape {tuple(t.shape)} does not broadcast to the batch shape {tuple(batch_shape)} "
            "(the logits' shape without the last dimension)"
        ) from None


def _window(lo: Tensor, hi: Tensor, n: int, dtype, device) -> Tensor:
    """``[*batch, K + 1]``: 0 on ``lo..hi`` (clipped to ``0..n``), ``-inf`` elsewhere; ``K = min(max hi, n)``."""
    K = min(int(hi.max()) if hi.numel() else 0, n)
    j = torch.arange(K + 1, device=device)
    inside = (j >= lo.unsqueeze(-1)) & (j <= hi.unsqueeze(-1))
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(inside, zero, torch.full((), -math.inf, dtype=dtype, device=device))


class CountConstraint:
    """Base class: a rule for ``|z|``. Subclasses implement :meth:`log_potentials`."""

    def log_potentials(self, batch_shape: torch.Size, n: int, dtype: torch.dtype, device) -> Tensor:
        """``phi [*batch_shape, K + 1]`` in ``dtype`` on ``device``, ``K <= n``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Exactly(CountConstraint):
    """``|z| = k`` — the plain k-subset distribution."""

    k: int | Tensor

    def __post_init__(self):
        object.__setattr__(self, "k", _bound(self.k, "Exactly(k): k"))

    def log_potentials(self, batch_shape, n, dtype, device):
        k = _as_rows(self.k, batch_shape, device, "Exactly(k): k")
        return _window(k, k, n, dtype, device)


@dataclass(frozen=True)
class AtMost(CountConstraint):
    """``|z| <= k`` (any size from 0 to k, weighted only by the logits)."""

    k: int | Tensor

    def __post_init__(self):
        object.__setattr__(self, "k", _bound(self.k, "AtMost(k): k"))

    def log_potentials(self, batch_shape, n, dtype, device):
        k = _as_rows(self.k, batch_shape, device, "AtMost(k): k")
        return _window(torch.zeros_like(k), k, n, dtype, device)


@dataclass(frozen=True)
class Between(CountConstraint):
    """``a <= |z| <= b``; ``b=None`` means no upper bound (then the cost is ``O(n^2)`` per row)."""

    a: int | Tensor
    b: int | Tensor | None = None

    def __post_init__(self):
        object.__setattr__(self, "a", _bound(self.a, "Between(a, b): a"))
        if self.b is not None:
            object.__setattr__(self, "b", _bound(self.b, "Between(a, b): b"))
            a, b = torch.as_tensor(self.a), torch.as_tensor(self.b)
            try:
                bad = bool((a > b).any())
            except RuntimeError:
                raise ValueError("Between(a, b): a and b do not broadcast against each other") from None
            if bad:
                raise ValueError(f"Between(a, b) needs a <= b, got a={self.a} and b={self.b}")

    def log_potentials(self, batch_shape, n, dtype, device):
        a = _as_rows(self.a, batch_shape, device, "Between(a, b): a")
        b = _as_rows(n if self.b is None else self.b, batch_shape, device, "Between(a, b): b")
        return _window(a, b, n, dtype, device)


@dataclass(frozen=True, eq=False)
class CountPotential(CountConstraint):
    """Any log-potentials ``phi [..., K + 1]`` over the counts ``0..K`` (``-inf`` = forbidden).

    ``phi`` broadcasts against the batch shape in its leading dimensions and keeps its autograd link, so a
    learned count prior (``nn.Parameter``) is trained through every differentiable function.
    """

    phi: Tensor

    def __post_init__(self):
        phi = self.phi
        if not isinstance(phi, Tensor):
            raise TypeError(f"CountPotential(phi): phi must be a torch.Tensor, got {type(phi).__name__}")
        if not phi.is_floating_point():
            raise TypeError(f"CountPotential(phi): phi must be a floating-point tensor, got {phi.dtype}")
        if phi.dim() == 0 or phi.shape[-1] == 0:
            raise ValueError(
                f"CountPotential(phi): phi needs a last dimension over the counts 0..K, got shape {tuple(phi.shape)}"
            )
        with torch.no_grad():
            if bool(torch.isnan(phi).any()):
                raise ValueError("CountPotential(phi): phi contains NaN")
            if bool((phi == math.inf).any()):
                raise ValueError("CountPotential(phi): phi contains +inf (use -inf to forbid a count, not +inf)")

    def log_potentials(self, batch_shape, n, dtype, device):
        phi = self.phi.to(device=device, dtype=dtype)[..., : n + 1]
        try:
            return phi.expand(*batch_shape, phi.shape[-1])
        except RuntimeError:
            raise ValueError(
                f"CountPotential(phi): phi of shape {tuple(self.phi.shape)} does not broadcast to the batch "
                f"shape {tuple(batch_shape)} plus a last dimension over the counts"
            ) from None


def as_constraint(counts: object) -> CountConstraint:
    """``counts`` as a :class:`CountConstraint` (a plain int or integer tensor means :class:`Exactly`)."""
    if isinstance(counts, CountConstraint):
        return counts
    if isinstance(counts, Tensor) and counts.is_floating_point():
        raise TypeError(
            "counts must be an int, an integer tensor or a count constraint (Exactly, AtMost, Between, "
            "CountPotential); a float tensor of log-potentials goes in CountPotential(phi)"
        )
    if isinstance(counts, (numbers.Integral, Tensor)) and not isinstance(counts, bool):
        return Exactly(counts if isinstance(counts, Tensor) else int(counts))
    raise TypeError(
        "counts must be an int, an integer tensor or a count constraint (Exactly, AtMost, Between, "
        f"CountPotential), got {type(counts).__name__}"
    )
