"""Autograd glue shared by every engine.

An *engine* is a module with the functions ``log_partition``, ``marginals``, ``cov_vec``, ``sample`` and
``sample_and_marginals`` on the canonical problem (see :mod:`._problem`), none of which needs autograd.
Here they become differentiable:

* ``d log Z / d theta = mu``,
* ``d mu / d theta = Cov(z)`` — symmetric, so the vector-Jacobian product is ``Cov(z) g``, an ``O(nK)``
  covariance-vector product (never an ``n × n`` matrix).

Second derivatives of ``log Z`` are supported; third and higher are not.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import reference, tree

__all__ = ["engine_for", "set_engine", "LogPartition", "Marginals", "Entropy", "SampleAndMarginals"]

_ENGINES: dict[str, ModuleType] = {"reference": reference, "tree": tree}
_forced_engine: str | None = None


def _kernels() -> ModuleType | None:
    try:
        from . import kernels
    except ImportError:
        return None
    return kernels if kernels.available() else None


def available_engines() -> list[str]:
    names = list(_ENGINES)
    if _kernels() is not None:
        names.append("kernels")
    return names


def set_engine(name: str | None) -> None:
    """Force one engine everywhere (``"reference"``, ``"tree"``, ``"kernels"``), or ``None`` for automatic.

    Meant for tests and benchmarks; the automatic choice is the fastest exact engine for the device.
    """
    global _forced_engine
    if name is not None and name not in available_engines():
        raise ValueError(f"unknown or unavailable engine {name!r}; available: {available_engines()}")
    _forced_engine = name


def engine_for(theta: Tensor) -> ModuleType:
    """The engine used for ``theta``: the compiled CPU kernel where it applies, else the tree."""
    if _forced_engine == "kernels":
        return _kernels()  # type: ignore[return-value]
    if _forced_engine is not None:
        return _ENGINES[_forced_engine]
    if theta.device.type == "cpu":
        kern = _kernels()
        if kern is not None and kern.supports(theta):
            return kern
    return tree


class Marginals(torch.autograd.Function):
    """``mu = Pr(z = 1)`` ``[B, n]``; backward ``Cov(z) g``."""

    @staticmethod
    def forward(ctx, theta: Tensor, k: Tensor, K: int, engine: ModuleType) -> Tensor:
        ctx.save_for_backward(theta, k)
        ctx.K, ctx.engine = K, engine
        return engine.marginals(theta.detach(), k, K)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        theta, k = ctx.saved_tensors
        return ctx.engine.cov_vec(theta, k, ctx.K, g.contiguous()), None, None, None


class LogPartition(torch.autograd.Function):
    """``log Z`` ``[B]``; backward ``g * mu`` (itself differentiable, so Hessian-vector products work)."""

    @staticmethod
    def forward(ctx, theta: Tensor, k: Tensor, K: int, engine: ModuleType) -> Tensor:
        ctx.save_for_backward(theta, k)
        ctx.K, ctx.engine = K, engine
        return engine.log_partition(theta.detach(), k, K)

    @staticmethod
    def backward(ctx, g: Tensor):
        theta, k = ctx.saved_tensors
        mu = Marginals.apply(theta, k, ctx.K, ctx.engine)
        return g.unsqueeze(-1) * mu, None, None, None


class SampleAndMarginals(torch.autograd.Function):
    """One pass giving exact draws ``z [S, B, n]`` (not differentiable) and marginals ``mu [B, n]``."""

    @staticmethod
    def forward(ctx, theta: Tensor, k: Tensor, K: int, engine: ModuleType, num_samples: int, generator):
        z, mu = engine.sample_and_marginals(theta.detach(), k, K, num_samples, generator)
        ctx.save_for_backward(theta, k)
        ctx.K, ctx.engine = K, engine
        ctx.mark_non_differentiable(z)
        return z, mu

    @staticmethod
    @once_differentiable
    def backward(ctx, _gz, g_mu: Tensor):
        theta, k = ctx.saved_tensors
        return ctx.engine.cov_vec(theta, k, ctx.K, g_mu.contiguous()), None, None, None, None, None


class Entropy(torch.autograd.Function):
    """Exact entropy ``[B]``; backward ``-g Cov(z) theta``.

    The value comes from the engine's ``entropy`` when it has one, else from the tree engine's (which sums
    non-negative terms and so keeps full precision at any logit scale).
    """

    @staticmethod
    def forward(ctx, theta: Tensor, k: Tensor, K: int, engine: ModuleType) -> Tensor:
        ctx.save_for_backward(theta, k)
        ctx.K, ctx.engine = K, engine
        value_engine = engine if hasattr(engine, "entropy") else tree
        return value_engine.entropy(theta.detach(), k, K)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        theta, k = ctx.saved_tensors
        # Cov(z) 1 = 0, so any per-row shift of theta gives the same product; the tilt keeps it small.
        x = theta + tree.tilt(theta, k).unsqueeze(-1)
        x = torch.where(torch.isfinite(theta), x, 0.0)
        return -g.unsqueeze(-1) * ctx.engine.cov_vec(theta, k, ctx.K, x), None, None, None
