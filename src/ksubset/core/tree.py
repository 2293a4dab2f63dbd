"""Production engine in plain PyTorch: a balanced binary tree of truncated convolutions.

Works on any device (no Python loop over items: ``O(log n)`` levels, each a handful of batched tensor ops).

Notation (all on the canonical problem of :mod:`._problem`): ``theta [B, n]`` finite on free items and
``-inf`` elsewhere, ``k [B]`` the number of free items to choose, ``K = max(k)``.

Numerics
--------
1. *Tilt.* By shift invariance, ``p_theta = p_{theta + c}``. Each row gets ``c`` with
   ``sum_i sigmoid(theta_i + c) ≈ k`` so that, under independent Bernoulli(``sigmoid(theta_i + c)``) items,
   the count ``k`` is a typical value of the sum. Then
   ``log Z = -c k + log Pr(S = k) + sum_i softplus(theta_i + c)``.
2. *Inside pass.* Leaf ``i`` holds the count distribution ``[1 - p_i, p_i]``; a parent holds the
   convolution of its children truncated to counts ``0..K``. Every node vector is divided by its maximum and
   the log of that factor is carried separately, so nothing under- or overflows (this is log-space
   arithmetic with one shared shift per vector, at the price of plain multiply-adds).
3. *Outside pass.* ``O_node[j] = d log Pr(S = k) / d inside_node[j]``; a child's outside vector is the
   correlation of its parent's outside vector with its sibling's inside vector. Marginals are
   ``mu_i = p_i * O_leaf_i[1]`` — products of non-negative numbers, so no cancellation.
4. *Sampling* walks the tree top-down: a node that must contain ``j`` selected items gives ``i`` to its
   left child with probability ``∝ left[i] * right[j - i]``.
5. *Covariance-vector products* (SIMPLE's backward) are forward-mode derivatives of the marginals
   (``Cov(z) v = d/de mu(theta + e v)``), computed with :func:`torch.func.jvp` through passes 2–3.

All temporaries larger than :data:`CHUNK_ELEMENTS` are built in chunks of nodes, so memory stays
``O(n log K + chunk)`` rather than ``O(n K)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .numerics import pow2, rand, softplus, tilt

__all__ = [
    "tilt",
    "log_partition",
    "marginals",
    "cov_vec",
    "cov3",
    "entropy",
    "uniforms",
    "sample",
    "sample_given",
    "sample_and_marginals",
    "sample_and_marginals_given",
]

#: Upper bound on the number of elements of one Toeplitz temporary (per chunk of nodes).
CHUNK_ELEMENTS = 1 << 24

def _pad_pow2(x: Tensor, value: float) -> Tensor:
    n = x.shape[-1]
    N = pow2(n)
    return F.pad(x, (0, N - n), value=value) if N != n else x


def _chunked(fn, n_nodes: int, per_node: int):
    """Run ``fn(slice)`` over node chunks so that one temporary holds <= CHUNK_ELEMENTS elements."""
    step = max(1, CHUNK_ELEMENTS // max(1, per_node))
    if step >= n_nodes:
        return fn(slice(None))
    return torch.cat([fn(slice(s, s + step)) for s in range(0, n_nodes, step)], dim=1)


def _conv(left: Tensor, right: Tensor, out_len: int) -> Tensor:
    """Truncated convolution ``out[..., j] = sum_i left[..., i] right[..., j - i]`` for ``j < out_len``.

    ``left, right: [B, M, L]`` → ``[B, M, out_len]``.
    """
    L = left.shape[-1]
    idx = torch.arange(out_len, device=left.device)[:, None] - torch.arange(L, device=left.device)[None, :]
    valid = (idx >= 0) & (idx < L)
    idx = idx.clamp(0, L - 1)

    def run(sl):
        toeplitz = right[:, sl][..., idx] * valid  # [B, m, out_len, L]
        return torch.matmul(toeplitz, left[:, sl].unsqueeze(-1)).squeeze(-1)

    return _chunked(run, left.shape[1], left.shape[0] * out_len * L)


def _corr(outer: Tensor, sibling: Tensor) -> Tensor:
    """Truncated correlation ``out[..., j] = sum_t outer[..., j + t] sibling[..., t]`` for ``j < L``.

    ``outer: [B, M, Lp]`` (parent's outside vector), ``sibling: [B, M, L]`` → ``[B, M, L]``.
    """
    Lp, L = outer.shape[-1], sibling.shape[-1]
    idx = torch.arange(L, device=outer.device)[:, None] + torch.arange(L, device=outer.device)[None, :]
    valid = idx < Lp
    idx = idx.clamp(max=Lp - 1)

    def run(sl):
        hankel = outer[:, sl][..., idx] * valid  # [B, m, L, L]
        return torch.matmul(hankel, sibling[:, sl].unsqueeze(-1)).squeeze(-1)

    return _chunked(run, outer.shape[1], outer.shape[0] * L * L)


def _normalise(v: Tensor) -> tuple[Tensor, Tensor]:
    """Divide each vector by its maximum; return it and the log of the factor."""
    mx = v.amax(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return v / mx, torch.log(mx.squeeze(-1))


def _leaves(theta: Tensor, c: Tensor, K: int) -> tuple[Tensor, Tensor]:
    """Tilted logits ``x [B, N]`` (padded to a power of two with ``-inf``) and leaf vectors ``[B, N, <=2]``."""
    x = _pad_pow2(theta + c.unsqueeze(-1), -math.inf)
    leaves = torch.stack([torch.sigmoid(-x), torch.sigmoid(x)], dim=-1)[..., : K + 1]
    return x, leaves


def _inside(leaves: Tensor, K: int) -> list[tuple[Tensor, Tensor]]:
    """All levels of the inside pass, leaves first: ``[(vectors [B, M, L], log_scale [B, M]), ...]``."""
    v = leaves
    s = torch.zeros(v.shape[:2], dtype=v.dtype, device=v.device)
    levels = [(v, s)]
    while v.shape[1] > 1:
        out = _conv(v[:, 0::2], v[:, 1::2], min(2 * v.shape[-1] - 1, K + 1))
        v, log_mx = _normalise(out)
        s = s[:, 0::2] + s[:, 1::2] + log_mx
        levels.append((v, s))
    return levels


def _root_value(levels, k: Tensor) -> Tensor:
    """``log Pr(S = k)`` under the tilted Bernoullis, ``[B]``."""
    v, s = levels[-1]
    return torch.log(v[:, 0].gather(-1, k.unsqueeze(-1)).squeeze(-1)) + s[:, 0]


def _log_partition_from(x: Tensor, levels, k: Tensor, c: Tensor) -> Tensor:
    return -c * k.to(x.dtype) + _root_value(levels, k) + softplus(x).sum(-1)


def _outside_leaves(levels, k: Tensor) -> tuple[Tensor, Tensor]:
    """Outside vectors of the leaves ``[B, N, L0]`` and their log scales ``[B, N]``."""
    v_root, _ = levels[-1]
    B = v_root.shape[0]
    o = torch.zeros_like(v_root)
    o.scatter_(-1, k.view(B, 1, 1), 1.0)
    r = -_root_value(levels, k).unsqueeze(-1)  # O_root[k] = 1 / Pr(S = k)
    for v, s in reversed(levels[:-1]):
        left, right = v[:, 0::2], v[:, 1::2]
        o_left, lm_left = _normalise(_corr(o, right))
        o_right, lm_right = _normalise(_corr(o, left))
        r_left = r + s[:, 1::2] + lm_left
        r_right = r + s[:, 0::2] + lm_right
        o = torch.stack([o_left, o_right], dim=2).flatten(1, 2)
        r = torch.stack([r_left, r_right], dim=2).flatten(1, 2)
    return o, r


def _marginals_from(x: Tensor, levels, k: Tensor, n: int) -> Tensor:
    o, r = _outside_leaves(levels, k)
    if o.shape[-1] < 2:  # K == 0: nothing is selected
        return torch.zeros_like(x[:, :n])
    tiny = torch.finfo(x.dtype).tiny
    log_mu = F.logsigmoid(x) + torch.log(o[..., 1].clamp_min(tiny)) + r
    mu = torch.exp(log_mu.clamp(max=0.0))
    return torch.where(torch.isfinite(x) & (o[..., 1] > 0), mu, 0.0)[:, :n]


def _leaf_log_weights(x: Tensor, levels, k: Tensor) -> tuple[Tensor, Tensor]:
    """``log Pr(z_i = 0)`` and ``log Pr(z_i = 1)`` per leaf ``[B, N]`` (``-inf`` where impossible)."""
    o, r = _outside_leaves(levels, k)
    log_o = torch.log(o)  # exact zeros stay -inf: those states are impossible
    log_nu = F.logsigmoid(-x) + log_o[..., 0] + r
    if o.shape[-1] < 2:
        return log_nu, torch.full_like(log_nu, -math.inf)
    return log_nu, F.logsigmoid(x) + log_o[..., 1] + r


def _marginals_given_tilt(theta: Tensor, k: Tensor, K: int, c: Tensor) -> Tensor:
    x, leaves = _leaves(theta, c, K)
    return _marginals_from(x, _inside(leaves, K), k, theta.shape[-1])


# ----------------------------------------------------------------------------------------------------------
# engine interface (no autograd; see functions.py)


def log_partition(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """``log e_k(exp theta)`` per row, ``[B]``."""
    c = tilt(theta, k)
    x, leaves = _leaves(theta, c, K)
    return _log_partition_from(x, _inside(leaves, K), k, c)


def marginals(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """``Pr(z_i = 1)``, ``[B, n]``."""
    return _marginals_given_tilt(theta, k, K, tilt(theta, k))


def cov_vec(theta: Tensor, k: Tensor, K: int, v: Tensor) -> Tensor:
    """``Cov(z) v`` per row, ``[B, n]`` (``v [B, n]``; entries of ``v`` on non-free items are ignored)."""
    c = tilt(theta, k)
    v = torch.where(torch.isfinite(theta), v, 0.0)
    _, tangent = torch.func.jvp(lambda t: _marginals_given_tilt(t, k, K, c), (theta,), (v,))
    return tangent


def cov3(theta: Tensor, k: Tensor, K: int, v: Tensor, w: Tensor) -> Tensor:
    """The third cumulant contracted with two vectors, ``sum_jl kappa_ijl v_j w_l``, ``[B, n]``.

    ``= d/dtheta [w · Cov(z) v]`` (kappa is symmetric): reverse mode over the forward-mode
    covariance-vector product (the tilt is held fixed, which is exact: the marginals do not depend on it).
    """
    c = tilt(theta, k)
    finite = torch.isfinite(theta)
    v = torch.where(finite, v, 0.0)
    w = torch.where(finite, w, 0.0)
    with torch.enable_grad():
        t = theta.detach().requires_grad_(True)
        _, cv = torch.func.jvp(lambda s: _marginals_given_tilt(s, k, K, c), (t,), (v,))
        (out,) = torch.autograd.grad((cv * w).sum(), t)
    return torch.where(finite, out, 0.0)


def _sample_from(levels, k: Tensor, n: int, u: Tensor) -> Tensor:
    """Walk the tree top-down; ``u [S, B, N - 1]`` holds one uniform per internal node (see :func:`uniforms`)."""
    v_root = levels[-1][0]
    B = v_root.shape[0]
    num_samples = u.shape[0]
    need = k.view(1, B, 1).expand(num_samples, B, 1)  # [S, B, M]
    for v, _ in reversed(levels[:-1]):
        left, right = v[:, 0::2], v[:, 1::2]  # [B, M, L]
        L, M = v.shape[-1], left.shape[1]
        i = torch.arange(L, device=v.device)
        rest = need.unsqueeze(-1) - i  # [S, B, M, L]: items the right child must take
        ok = (rest >= 0) & (rest < L)
        r = right.unsqueeze(0).expand(num_samples, *right.shape)
        w = left.unsqueeze(0) * r.gather(-1, rest.clamp(0, L - 1)) * ok
        cdf = w.cumsum(-1)
        # u in (0, 1]: never lands on a zero-weight entry.
        level_u = 1.0 - u[:, :, M - 1 : 2 * M - 1]
        take_left = (cdf < (level_u * cdf[..., -1]).unsqueeze(-1)).sum(-1).clamp(max=L - 1)
        need = torch.stack([take_left, need - take_left], dim=-1).flatten(-2)
    return need[..., :n]


def uniforms(theta: Tensor, num_samples: int, generator=None) -> Tensor:
    """The uniforms the sampler consumes, ``[S, B, N - 1]`` (``N`` = ``n`` padded to a power of two).

    Column ``M - 1 + j`` serves node ``j`` of the level with ``M`` nodes. They are drawn level by level from
    the root in one ``torch.rand`` call (the order the sampler used to draw them itself, so a generator in
    the same state gives the same samples as before).
    """
    B, n = theta.shape
    N = pow2(n)
    S = num_samples
    flat = rand((S * B * (N - 1),), generator, theta.device, theta.dtype)
    parts, offset, M = [], 0, 1
    while M < N:
        parts.append(flat[offset : offset + S * B * M].view(S, B, M))
        offset += S * B * M
        M *= 2
    if not parts:
        return flat.view(S, B, 0)
    return torch.cat(parts, dim=-1)


def entropy(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """Exact entropy per row ``[B]``, as a sum of non-negative terms (no cancellation at any logit scale).

    With tilted logits ``x`` and ``P = Pr(S = k)`` under Bernoulli(``sigmoid(x)``),
    ``H = log P + sum_i [softplus(x_i) - x_i mu_i]``, and each bracket is written without cancellation:
    ``softplus(-x) + x (1 - mu)`` for ``x >= 0`` and ``softplus(x) + (-x) mu`` for ``x < 0``, where
    ``1 - mu = (1 - p_i) O_i[0]`` comes from the outside pass rather than from a subtraction.
    """
    c = tilt(theta, k)
    x, leaves = _leaves(theta, c, K)
    levels = _inside(leaves, K)
    log_nu, log_mu = _leaf_log_weights(x, levels, k)
    nu, mu = torch.exp(log_nu.clamp(max=0.0)), torch.exp(log_mu.clamp(max=0.0))
    term = torch.where(x >= 0, softplus(-x) + x * nu, softplus(x) - x * mu)
    term = torch.where(torch.isfinite(x), term, 0.0)
    return _root_value(levels, k) + term.sum(-1)


def sample_given(theta: Tensor, k: Tensor, K: int, u: Tensor) -> Tensor:
    """Exact samples ``[S, B, n]`` int64 in {0, 1} from the uniforms ``u`` of :func:`uniforms`."""
    c = tilt(theta, k)
    _, leaves = _leaves(theta, c, K)
    return _sample_from(_inside(leaves, K), k, theta.shape[-1], u)


def sample(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None) -> Tensor:
    """Exact samples, ``[S, B, n]`` int64 in {0, 1}, with ``k`` ones on free items of each row."""
    return sample_given(theta, k, K, uniforms(theta, num_samples, generator))


def sample_and_marginals_given(theta: Tensor, k: Tensor, K: int, u: Tensor):
    """One inside pass shared by a draw ``[S, B, n]`` (from ``u``) and the marginals ``[B, n]``."""
    c = tilt(theta, k)
    x, leaves = _leaves(theta, c, K)
    levels = _inside(leaves, K)
    z = _sample_from(levels, k, theta.shape[-1], u)
    return z, _marginals_from(x, levels, k, theta.shape[-1])


def sample_and_marginals(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None):
    """One inside pass shared by a draw ``[S, B, n]`` and the marginals ``[B, n]`` (SIMPLE's forward)."""
    return sample_and_marginals_given(theta, k, K, uniforms(theta, num_samples, generator))
