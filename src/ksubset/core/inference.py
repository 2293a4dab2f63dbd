"""Exact inference on the k-subset distribution ``p(z) ∝ exp(theta · z)``, ``z ∈ {0,1}^n``, ``|z| = k``.

Shapes: ``logits [..., n]`` (any batch shape); ``k`` an int or an integer tensor broadcastable to
``logits.shape[:-1]``; ``mask [..., n]`` bool, True = available. Results keep the logits' dtype and device
(float16/bfloat16 are computed in float32 inside).

Extreme logits: ``-inf`` (or ``mask == False``) means *never selected*; ``+inf`` means *always selected*.
Forced items are conditioned on: they contribute nothing to ``theta · z`` or to ``log_partition``, so the
log-partition, log-probabilities, entropy and KL are those of the distribution over the remaining (free)
items, which choose ``k - #forced`` of themselves.

Extreme *finite* logits (``torch.finfo(dtype).min`` as a mask, ``1e30``) are taken at their limit (see
:mod:`._extremes`): an item further below (above) the others than the compute dtype resolves is never (always)
selected, exactly like a ``-inf`` (``+inf``) logit, except that its finite logit still counts where the
value is finite: ``log_partition`` includes the logits of the items so forced, ``log_prob`` keeps the true
(very negative) value of a subset that leaves one out, and ``kl_uniform`` is relative to every item the caller
left available.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from . import _extremes, functions
from ._problem import Problem, check_generator, check_logits, prepare
from .engine import engine_module
from .numerics import tilt

__all__ = [
    "log_partition",
    "marginals",
    "sample",
    "sample_and_marginals",
    "log_prob",
    "entropy",
    "kl_divergence",
    "kl_uniform",
    "mode",
]

_SampleShape = int | Sequence[int] | torch.Size


def _log_z(P: Problem) -> Tensor:
    """Differentiable ``log Z`` of the free items, ``[B]`` in the compute dtype (of the re-centred remaining
    problem when the limit rule ran: see :func:`_full_log_z`)."""
    return functions.log_partition(P.theta, P.k, P.engine)


def _full_log_z(P: Problem) -> Tensor:
    """``log Z`` of the caller's logits (forced ``+inf`` items excluded), ``[B]``: with the limit rule, plus the
    limit-forced logits and the re-centring."""
    lz = _log_z(P)
    if P.limit is not None:
        lz = _extremes.full_log_z(P.limit, P.k, lz)
    return lz


def _free_marginals(P: Problem) -> Tensor:
    """Differentiable marginals of the free items (0 elsewhere), ``[B, n]`` in the compute dtype."""
    return functions.marginals(P.theta, P.k, P.engine)


def _theta_or_zero(P: Problem) -> Tensor:
    return torch.where(P.free, P.theta, 0.0)


def log_partition(logits: Tensor, k: int | Tensor, mask: Tensor | None = None) -> Tensor:
    """``log e_k(exp theta)`` per row, ``[...]``. Differentiable (gradient = marginals, Hessian = Cov)."""
    P = prepare(logits, k, mask)
    return _full_log_z(P).reshape(P.batch_shape).to(P.dtype)


def marginals(logits: Tensor, k: int | Tensor, mask: Tensor | None = None) -> Tensor:
    """Inclusion probabilities ``Pr(z_i = 1)``, ``[..., n]``; sums to ``k`` per row.

    Differentiable: the vector-Jacobian product is ``Cov(z) g``.
    """
    P = prepare(logits, k, mask)
    mu = _free_marginals(P)
    if not P.none_forced:
        mu = mu + P.forced.to(P.theta.dtype)
    return P.unflatten(mu).to(P.dtype)


def _num_samples(sample_shape: _SampleShape) -> tuple[torch.Size, int]:
    if isinstance(sample_shape, int):
        sample_shape = (sample_shape,)
    try:
        shape = torch.Size(sample_shape)
    except TypeError:
        raise TypeError(f"sample_shape must be a sequence of ints, got {sample_shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"sample_shape must be non-negative, got {tuple(shape)}")
    return shape, math.prod(shape)


def _uniforms(P: Problem, num_samples: int, generator: torch.Generator | None) -> Tensor:
    """The engine's uniforms for ``num_samples`` draws, from ``generator`` (or the global generator).

    Drawn here, outside the sampling operator, so that the operator is a deterministic function of its
    inputs; under ``torch.compile`` this ``torch.rand`` is part of the graph (see the README on generators).
    """
    return engine_module(P.engine).uniforms(P.theta.detach(), num_samples, generator)


def _finish_samples(P: Problem, z: Tensor, sample_shape: torch.Size) -> Tensor:
    z = z.to(P.dtype) if P.none_forced else (z.bool() | P.forced).to(P.dtype)
    return z.reshape(*sample_shape, *P.batch_shape, P.n)


def sample(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    sample_shape: _SampleShape = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact draws from the k-subset distribution, ``[*sample_shape, ..., n]``, 0/1 in the logits' dtype.

    Every row has exactly ``k`` ones. This is *not* Gumbel top-k (sampling without replacement), which is a
    different distribution. Randomness comes only from ``generator`` (or the global generator).
    """
    check_generator(generator)
    P = prepare(logits, k, mask)
    shape, S = _num_samples(sample_shape)
    z = functions.sample(P.theta, P.k, _uniforms(P, S, generator), P.engine)
    return _finish_samples(P, z, shape)


def sample_and_marginals(
    logits: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    sample_shape: _SampleShape = (),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact draws ``[*sample_shape, ..., n]`` and differentiable marginals ``[..., n]`` from one pass.

    The building block of SIMPLE (``z + mu - mu.detach()``); cheaper than calling ``sample`` and
    ``marginals`` separately.
    """
    check_generator(generator)
    P = prepare(logits, k, mask)
    shape, S = _num_samples(sample_shape)
    z, mu = functions.sample_and_marginals(P.theta, P.k, _uniforms(P, S, generator), P.engine)
    if not P.none_forced:
        mu = mu + P.forced.to(mu.dtype)
    return _finish_samples(P, z, shape), P.unflatten(mu).to(P.dtype)


def _check_z(z: object, logits: Tensor) -> Tensor:
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() == 0 or z.shape[-1] != logits.shape[-1]:
        raise ValueError(
            f"z must have the items in its last dimension ({logits.shape[-1]}), got shape {tuple(z.shape)}"
        )
    try:
        torch.broadcast_shapes(z.shape, logits.shape)
    except RuntimeError:
        raise ValueError(
            f"z of shape {tuple(z.shape)} does not broadcast with the logits' shape {tuple(logits.shape)}"
        ) from None
    return z


def _support_check(P: Problem, z: Tensor) -> tuple[Tensor, Tensor]:
    """``z`` as compute-dtype ``[..., *batch, n]`` and whether each is a valid k-subset, ``[..., *batch]``.

    Valid: 0/1, no unavailable item, every ``+inf`` item, ``k`` ones in all. Items of the limit rule may be
    either (their log-probability is finite, see :func:`._extremes.log_prob_terms`).
    """
    zc = z.to(P.theta.dtype)
    available = P.unflatten(P.available)
    hard_forced = P.unflatten(P.hard_forced)
    k_full = (P.k + P.forced.sum(-1)).reshape(P.batch_shape)
    binary = ((zc == 0) | (zc == 1)).all(-1)
    on_support = (
        binary
        & torch.where(available, True, zc == 0).all(-1)
        & torch.where(hard_forced, zc == 1, True).all(-1)
        & ((zc * available).sum(-1) == k_full)
    )
    return zc, on_support


def log_prob(
    logits: Tensor, k: int | Tensor, z: Tensor, mask: Tensor | None = None, *, validate: bool = False
) -> Tensor:
    """``theta · z - log Z`` for each k-subset ``z [..., n]`` (``z`` broadcasts against ``logits``).

    Returns ``-inf`` where ``z`` is not a k-subset of the available items (or misses a forced item); with
    ``validate=True`` raises ``ValueError`` instead.
    """
    logits = check_logits(logits)
    z = _check_z(z, logits)
    P = prepare(logits, k, mask)
    zc, ok = _support_check(P, z)
    if validate and not bool(ok.all()):
        raise ValueError("z is not a k-subset of the available items in every row (see ksubset.log_prob)")
    score = (P.unflatten(_theta_or_zero(P)) * zc).sum(-1)
    lp = score - _log_z(P).reshape(P.batch_shape)
    if P.limit is not None:  # the limit items' terms (and the re-centring of theta) complete log p(z)
        lp = lp + _extremes.log_prob_terms(P.limit, zc, P.unflatten)
    return torch.where(ok, lp, float("-inf")).to(P.dtype)


def _tilted(P: Problem) -> tuple[Problem, Tensor]:
    """The same problem with each row's logits shifted so that ``sum sigmoid(theta) ≈ k``, and the shift ``[B]``.

    Shifting changes nothing mathematically (``p_{theta + c} = p_theta``), but a KL computed as a difference
    of large terms loses ``|theta| * eps`` to cancellation; after the shift the terms are smaller. The shift
    is detached, which is exact for shift-invariant quantities.
    """
    c = tilt(P.theta.detach(), P.k)
    return replace(P, theta=P.theta + c.unsqueeze(-1)), c


def _entropy(P: Problem) -> Tensor:
    return functions.entropy(P.theta, P.k, P.engine)


def entropy(logits: Tensor, k: int | Tensor, mask: Tensor | None = None) -> Tensor:
    """Exact entropy ``H = log Z - theta · mu`` per row, ``[...]``; differentiable."""
    P = prepare(logits, k, mask)
    return _entropy(P).reshape(P.batch_shape).to(P.dtype)


def kl_uniform(logits: Tensor, k: int | Tensor, mask: Tensor | None = None) -> Tensor:
    """``KL(p_theta || uniform k-subsets of the available items) = log C(m, k) - H``, ``[...]``.

    The prior term of a discrete VAE with k-subset latents.
    """
    P = prepare(logits, k, mask)
    m = P.available.sum(-1).to(P.theta.dtype)
    k_full = (P.k + P.forced.sum(-1)).to(P.theta.dtype)
    log_binom = torch.lgamma(m + 1) - torch.lgamma(k_full + 1) - torch.lgamma(m - k_full + 1)
    return (log_binom - _entropy(P)).reshape(P.batch_shape).to(P.dtype)


def _same_free_problem(P: Problem, Q: Problem) -> bool:
    """Whether ``P`` and ``Q`` choose among the same free items with the same forced ones (and neither needed
    the limit rule): then KL is that of the two free problems (one host read)."""
    if P.limit is not None or Q.limit is not None or P.engine != Q.engine:
        return False
    if P.none_forced and Q.none_forced:
        return bool(torch.equal(P.free, Q.free))
    return bool(torch.equal(P.free, Q.free) and torch.equal(P.forced, Q.forced))


def kl_divergence(
    p_logits: Tensor, q_logits: Tensor, k: int | Tensor, mask: Tensor | None = None
) -> Tensor:
    """Exact ``KL(p || q)`` between two k-subset distributions on the same items, ``[...]``.

    ``KL = (theta - phi) · mu_theta - log Z(theta) + log Z(phi)``; ``+inf`` where ``p`` puts mass on subsets
    that ``q`` excludes (an item ``q`` cannot select, or an item ``q`` forces and ``p`` may leave out).
    """
    check_logits(p_logits, "p_logits")
    check_logits(q_logits, "q_logits")
    try:
        shape = torch.broadcast_shapes(p_logits.shape, q_logits.shape)
    except RuntimeError:
        raise ValueError(
            f"p_logits {tuple(p_logits.shape)} and q_logits {tuple(q_logits.shape)} do not broadcast"
        ) from None
    if p_logits.shape[-1] != q_logits.shape[-1]:
        raise ValueError("p_logits and q_logits must have the same number of items (last dimension)")
    P0 = prepare(p_logits.expand(shape), k, mask, name="p_logits")
    Q0 = prepare(q_logits.expand(shape), k, mask, name="q_logits")
    if _same_free_problem(P0, Q0):
        fused = functions.kl_divergence(P0.theta, Q0.theta.to(P0.theta.dtype), P0.k, P0.engine)
        if fused is not None:
            return fused.reshape(P0.batch_shape).to(P0.dtype)
    P, _ = _tilted(P0)
    Q, c_q = _tilted(Q0)
    mu = _free_marginals(P) + P.forced.to(P.theta.dtype)
    # KL is invariant to shifting theta and phi separately, so the tilted logits may be used.
    kl = ((_theta_or_zero(P) - _theta_or_zero(Q).to(P.theta.dtype)) * mu).sum(-1) - _log_z(P)
    kl = kl + _log_z(Q).to(kl.dtype)
    if Q.limit is not None:
        # E_p log q(z) with q's limit items: their terms, and the tilt of q's remaining problem, which p's
        # subsets may take more or fewer of than q's remaining k (shift invariance holds only at that k).
        on_rest = (mu * Q.free).sum(-1) - Q.k.to(mu.dtype)
        extra = _extremes.expected_terms(Q.limit, mu) - c_q.to(mu.dtype) * on_rest
        kl = kl - torch.where(Q.limit.rows, extra, 0.0)
    may_select = P.forced | (P.free & (P.k > 0).unsqueeze(-1))
    must_select = P.forced | (P.free & (P.k == P.free.sum(-1)).unsqueeze(-1))
    incompatible = (may_select & ~Q.available).any(-1) | (Q.hard_forced & ~must_select).any(-1)
    kl = torch.where(incompatible, float("inf"), kl)
    return kl.reshape(P.batch_shape).to(P.dtype)


def mode(logits: Tensor, k: int | Tensor, mask: Tensor | None = None) -> Tensor:
    """The most probable k-subset (top-k of the available logits), ``[..., n]`` 0/1 in the logits' dtype."""
    P = prepare(logits, k, mask)
    with torch.no_grad():
        k_full = P.k + P.forced.sum(-1)
        if P.k_static is not None:  # no host sync (and nothing data-dependent for torch.compile)
            K = min(P.k_static, P.n)
        else:
            K = int(k_full.max()) if k_full.numel() else 0
        x = torch.where(P.forced, float("inf"), P.theta.detach())
        z = torch.zeros_like(x)
        if K > 0:
            idx = x.topk(K, dim=-1).indices
            keep = torch.arange(K, device=x.device) < k_full.unsqueeze(-1)
            z.scatter_(-1, idx, keep.to(z.dtype))
    return P.unflatten(z).to(P.dtype)
