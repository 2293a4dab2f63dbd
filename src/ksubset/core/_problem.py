"""Input checking and reduction of a public call to a canonical batched problem.

Every public function goes through :func:`prepare`, which

* checks the arguments and raises ``TypeError`` / ``ValueError`` naming the argument (and the row),
* flattens the batch to ``[B, n]``,
* removes the two kinds of extreme items: unavailable ones (``mask == False`` or ``-inf`` logits) are
  never selected, forced ones (``+inf`` logits) are always selected, so the remaining *free* items carry a
  reduced requirement ``k_free = k - #forced``,
* applies the limit rule of :mod:`._extremes`: finite logits further below (above) the others than the compute
  dtype can resolve are made unavailable (forced), and the remaining free logits are re-centred.

The checks that need the values (NaN, ``k`` against each row's available and forced items) run inside the
operator ``ksubset::canonical`` (:mod:`.ops`): opaque to ``torch.compile``, so they run, and raise, with the
compiled code too, without breaking its graph.

The engines (``reference``, ``tree``, ``kernels``) only ever see the canonical problem: free items have
finite logits, every other item has logit ``-inf``, and ``0 <= k_free <= #free`` holds in every row.
Quantities that are not shift-invariant (``log Z``, ``log p(z)``, KL) add back what the limit rule took out
(``Problem.limit``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _extremes, ops
from ._extremes import Limit
from .engine import engine_for_call

__all__ = ["Problem", "prepare", "compute_dtype", "check_generator"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32; float32/float64 as they are."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


@dataclass
class Problem:
    """A validated, flattened k-subset problem.

    Attributes:
        theta: ``[B, n]`` logits in the compute dtype; finite on free items, ``-inf`` elsewhere. Keeps the
            autograd link to the caller's logits (gradients reach the free items only). Minus ``limit.shift``
            when the limit rule ran.
        k: ``[B]`` int64, how many *free* items each row selects.
        free: ``[B, n]`` bool, items that are neither forced nor unavailable.
        forced: ``[B, n]`` bool, items that are always selected (available ``+inf`` logits, and the items the
            limit rule forced).
        available: ``[B, n]`` bool, the caller's available items (not masked, logit not ``-inf``): free,
            forced, and the items the limit rule made unavailable.
        batch_shape: the caller's batch shape (``logits.shape[:-1]``).
        dtype: the caller's dtype (outputs are cast back to it).
        engine: the name of the engine that runs (resolved when the problem is prepared).
        k_static: the caller's ``k`` when it was a Python int (every row's full ``k``), else None.
        limit: what the limit rule did (:class:`._extremes.Limit`), or None when it did not run (then no
            logit is extreme, and ``theta`` is not shifted).
        none_forced: True when every item is known to be free (the common call): ``forced`` is all False and
            the outputs skip adding it (a few passes over ``[B, n]`` that dominate on many tiny rows).
    """

    theta: Tensor
    k: Tensor
    free: Tensor
    forced: Tensor
    available: Tensor
    batch_shape: torch.Size
    dtype: torch.dtype
    engine: str = "auto"
    k_static: int | None = None
    limit: Limit | None = None
    none_forced: bool = False

    @property
    def n(self) -> int:
        return self.theta.shape[-1]

    @property
    def k_max(self) -> int:
        """``max(k)`` as a Python int (a host sync; the operators compute it themselves)."""
        return int(self.k.max()) if self.k.numel() else 0

    def unflatten(self, x: Tensor, event_dims: int = 1) -> Tensor:
        """``[..., B, *event]`` → ``[..., *batch_shape, *event]`` (event_dims trailing dims are kept)."""
        lead = x.shape[: x.dim() - 1 - event_dims]
        event = x.shape[x.dim() - event_dims :]
        return x.reshape(*lead, *self.batch_shape, *event)

    @property
    def hard_forced(self) -> Tensor:
        """``[B, n]`` bool, the items forced by a ``+inf`` logit (not by the limit rule)."""
        return self.forced if self.limit is None else self.forced & ~self.limit.forced


def check_logits(logits: object, name: str = "logits") -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), "
            f"got {logits.dtype}"
        )
    if logits.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the items), got a 0-dimensional tensor")
    if logits.shape[-1] == 0:
        raise ValueError(f"{name} has no items: its last dimension is 0 (shape {tuple(logits.shape)})")
    return logits


def check_mask(mask: object, logits: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = available), got {mask.dtype}")
    try:
        shape = torch.broadcast_shapes(mask.shape, logits.shape)
    except RuntimeError:
        shape = None
    if shape != logits.shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the logits' shape {tuple(logits.shape)}"
        )
    return mask.to(logits.device).expand(logits.shape)


def check_k(k: object, batch_shape: torch.Size, device: torch.device) -> Tensor:
    """``k`` as an int64 tensor of shape ``batch_shape``."""
    if isinstance(k, bool):
        raise TypeError("k must be an int or an integer tensor, got bool")
    if isinstance(k, int):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if k > torch.iinfo(torch.int64).max:
            raise ValueError(f"k={k} is too large: more than any number of items (k must fit in int64)")
        return torch.full(batch_shape, k, dtype=torch.int64, device=device)
    if isinstance(k, Tensor):
        if k.dtype == torch.bool or k.is_floating_point() or k.is_complex():
            raise TypeError(f"k must be an int or an integer tensor, got a tensor of dtype {k.dtype}")
        try:
            kb = k.to(device=device, dtype=torch.int64).expand(batch_shape)
        except RuntimeError:
            raise ValueError(
                f"k of shape {tuple(k.shape)} does not broadcast to the batch shape {tuple(batch_shape)} "
                "(the logits' shape without the last dimension)"
            ) from None
        return kb
    if isinstance(k, numbers.Integral):  # numpy integers and the like (their own errors must pass through)
        return check_k(int(k), batch_shape, device)
    raise TypeError(f"k must be an int or an integer tensor, got {type(k).__name__}")


def check_generator(generator: object) -> None:
    """``generator`` must be None or a ``torch.Generator`` (a NumPy generator is a common mistake)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__module__}."
            f"{type(generator).__name__} (e.g. torch.Generator().manual_seed(0))"
        )


def prepare(logits: Tensor, k: int | Tensor, mask: Tensor | None = None, *, name: str = "logits") -> Problem:
    """Validate a public call and reduce it to the canonical free-item problem (see module docstring)."""
    logits = check_logits(logits, name)
    mask = check_mask(mask, logits)
    batch_shape = logits.shape[:-1]
    n = logits.shape[-1]
    device = logits.device
    kt = check_k(k, batch_shape, device)

    dt = compute_dtype(logits.dtype)
    x = logits.reshape(-1, n).to(dt)
    flat_mask = None if mask is None else mask.reshape(-1, n)
    x_in, k_in = x.detach(), kt.reshape(-1)
    k_static = int(k) if isinstance(k, int) else None
    engine = engine_for_call(device, dt, n, k_static)
    if ops.direct(x_in, k_in, flat_mask):
        k_free, free, forced, all_free, extent = ops.canonical_checked(
            x_in, k_in, flat_mask, batch_shape, name, k_static
        )
        if not _extremes.needed(x_in, free, all_free, extent):
            if all_free:  # nothing to cut (the common call): skip the where()
                return Problem(x, k_free, free, forced, free, batch_shape, logits.dtype, engine, k_static,
                               none_forced=True)
            # where() keeps the autograd link for free items and cuts it elsewhere.
            theta = torch.where(free, x, torch.full((), float("-inf"), dtype=dt, device=device))
            return Problem(theta, k_free, free, forced, free | forced, batch_shape, logits.dtype, engine, k_static)
        available = free | forced
        k_free, free, forced, lf, lr, shift = _extremes.apply(x_in, k_free, free, forced)
    else:  # compiling or under torch.func: the operators (opaque, no data-dependent branch in the graph)
        k_free, free, forced = ops.canonical(x_in, k_in, flat_mask, list(batch_shape), name, k_static)
        available = free | forced
        k_free, free, forced, lf, lr, shift = _extremes.limit(x_in, k_free, free, forced)
    theta = torch.where(free, x - shift.unsqueeze(-1), torch.full((), float("-inf"), dtype=dt, device=device))
    lim = Limit(x, shift, lf, lr)
    return Problem(theta, k_free, free, forced, available, batch_shape, logits.dtype, engine, k_static, lim)
