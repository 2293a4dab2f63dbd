"""Production engine in plain PyTorch: a balanced binary tree of truncated convolutions.

Works on any device (no Python loop over items: ``O(log n)`` levels, each a handful of batched tensor ops).

Notation (all on the canonical problem of :mod:`._problem`): ``theta [B, n]`` finite on free items and
``-inf`` elsewhere, ``k [B]`` the number of free items to choose, ``K = max(k)``, ``m`` a row's free items.

Numerics
--------
0. *Complement.* Choosing ``k`` of ``m`` items is leaving out ``m - k``: ``p_theta(z) = p_{-theta}(1 - z)``
   on the free items with ``m - k`` chosen. Rows with ``2 k > m`` are solved as that complement, so the
   count vectors below are truncated at ``K' = max(min(k, m - k)) <= n / 2``. Results map back without a
   subtraction: ``Pr(z_i = 1)`` of the row is ``Pr(z_i = 0)`` of its complement (both come out of the
   outside pass), samples are ``1 - z``, and ``log Z`` and the entropy are computed from quantities both
   problems share (the event ``S = k``, the tilted logits ``x``).
1. *Tilt.* By shift invariance, ``p_theta = p_{theta + c}``. Each row gets ``c = delta - ref``
   (:func:`.numerics.tilt_parts`) with ``sum_i sigmoid(x_i) ≈ k`` for ``x = (theta - ref) + delta``, so
   that under independent Bernoulli(``sigmoid(x_i)``) items the count ``k`` is near the mode of the sum and
   ``P = Pr(S = k) >~ 1 / (2 (m + 1))``. Then, with ``A = {i : x_i > 0}``,
   ``log Z = sum_{i in A} theta_i + (|A| - k) c + log P + sum_i log(1 + e^{-|x_i|})``,
   where no large term cancels another (for any spread of the logits: when they are far apart ``|A| = k``
   and ``log Z`` is the sum of the ``k`` largest logits plus small corrections).
2. *Inside pass.* Leaf ``i`` holds the count distribution ``[1 - p_i, p_i]``; a parent holds the
   convolution of its children truncated to counts ``0..K'``. Every node vector is divided by its maximum and
   the log of that factor is carried separately, so nothing under- or overflows. Entries that underflow
   relative to their vector's maximum only ever meet factors ``<= 1`` and so contribute less than
   ``tiny / P`` to any result.
3. *Outside pass.* ``O_node[j] = d log Pr(S = k) / d inside_node[j]``; a child's outside vector is the
   correlation of its parent's outside vector with its sibling's inside vector. Then
   ``Pr(z_i = 1) = p_i O_leaf_i[1]`` and ``Pr(z_i = 0) = (1 - p_i) O_leaf_i[0]`` — products of non-negative
   numbers, so no cancellation.
4. *Sampling* walks the tree top-down: a node that must contain ``j`` selected items gives ``i`` to its
   left child with probability ``∝ left[i] * right[j - i]``.
5. *Covariance-vector products* (SIMPLE's backward) are forward-mode derivatives of the marginals
   (``Cov(z) v = d/de mu(theta + e v)``), computed with :func:`torch.func.jvp` through passes 2–3
   (the complement's sign flip included); ``cov3`` differentiates that once more in reverse mode.

Memory: the levels hold ``O(n log n)`` numbers; the banded matrix-vector products of the convolutions are
built in chunks of at most :data:`CHUNK_ELEMENTS` elements (over nodes, then over output entries), so no
temporary grows like ``K^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .numerics import pow2, rand, shifted, softplus, tilt, tilt_parts

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

#: Upper bound on the number of elements of one banded-matrix temporary of the convolutions.
CHUNK_ELEMENTS = 1 << 22


@dataclass
class _Setup:
    """How a batch is solved (no autograd): which rows as their complement, and their tilt.

    ``free [B, n]`` bool; ``flip [B]`` bool (row solved as its complement); ``kw [B]`` int64 items chosen in
    the solved problem (``k`` or ``m - k``); ``Kw = max(kw)``; ``ref, delta [B]`` the solved problem's tilt
    (:func:`.numerics.tilt_parts` of ``theta_w``, where ``theta_w = -theta`` on flipped rows).
    """

    free: Tensor
    flip: Tensor
    kw: Tensor
    Kw: int
    ref: Tensor
    delta: Tensor


def _setup(theta: Tensor, k: Tensor) -> _Setup:
    with torch.no_grad():
        free = torch.isfinite(theta)
        m = free.sum(-1)
        flip = 2 * k > m
        kw = torch.where(flip, m - k, k)
        Kw = int(kw.max()) if kw.numel() else 0
        theta_w = torch.where(free, torch.where(flip.unsqueeze(-1), -theta, theta), -math.inf)
        ref, delta = tilt_parts(theta_w, kw, Kw)
    return _Setup(free, flip, kw, Kw, ref, delta)


def _work_logits(theta: Tensor, s: _Setup) -> Tensor:
    """Tilted logits of the solved problem, ``[B, N]`` (padded to a power of two with ``-inf``).

    Differentiable in ``theta`` (the tilt is a constant: nothing depends on it).
    """
    t = torch.where(s.free, theta, 0.0)
    t = torch.where(s.flip.unsqueeze(-1), -t, t)
    x = torch.where(s.free, shifted(t, s.ref) + s.delta.unsqueeze(-1), -math.inf)
    n = x.shape[-1]
    N = pow2(n)
    return F.pad(x, (0, N - n), value=-math.inf) if N != n else x


def _leaves(x: Tensor, K: int) -> Tensor:
    """Leaf count vectors ``[B, N, min(2, K + 1)]``: ``[1 - p_i, p_i]`` with ``p_i = sigmoid(x_i)``."""
    return torch.stack([torch.sigmoid(-x), torch.sigmoid(x)], dim=-1)[..., : K + 1]


def _banded_impl(padded: Tensor, vec: Tensor, out_len: int) -> Tensor:
    """``out[p, j] = sum_t padded[p, j + t] vec[p, t]`` for ``j < out_len``, ``t < L``.

    ``padded [P, >= out_len + L - 1]``, ``vec [P, L]`` → ``[P, out_len]``. The banded matrix is a strided
    view; the matrix product copies at most :data:`CHUNK_ELEMENTS` of it at a time.
    """
    P, L = vec.shape
    windows = padded.unfold(-1, L, 1)  # [P, W, L] view: windows[p, j, t] = padded[p, j + t]
    vec = vec.unsqueeze(-1)
    rows = max(1, CHUNK_ELEMENTS // L)  # output entries per chunk
    if out_len <= rows:
        step = max(1, rows // out_len)
        if step >= P:
            return torch.matmul(windows[:, :out_len], vec).squeeze(-1)
        return torch.cat(
            [torch.matmul(windows[p : p + step, :out_len], vec[p : p + step]).squeeze(-1) for p in range(0, P, step)]
        )
    out = []
    for p in range(P):
        parts = [
            torch.matmul(windows[p, j : min(j + rows, out_len)], vec[p]).squeeze(-1) for j in range(0, out_len, rows)
        ]
        out.append(torch.cat(parts))
    return torch.stack(out)


def _full_conv(g: Tensor, vec: Tensor, width: int) -> Tensor:
    """``out[p, s] = sum_j g[p, j] vec[p, s - j]`` for ``s < width`` (``g [P, Lg]``, ``vec [P, L]``)."""
    Lg, L = g.shape[-1], vec.shape[-1]
    padded = F.pad(vec, (Lg - 1, max(0, width - L)))  # padded[s + t] = vec[s - (Lg - 1 - t)]
    return _banded(padded, g.flip(-1), width)


class _Banded(torch.autograd.Function):
    """:func:`_banded_impl` with its derivatives written as banded products too, so that no derivative (forward,
    reverse, reverse over forward) keeps or builds more than a chunk of the banded matrix: what autograd
    saves is the two level-sized inputs."""

    generate_vmap_rule = True  # torch.func.hessian & co. vmap over the engine's forward-mode derivatives

    @staticmethod
    def forward(padded: Tensor, vec: Tensor, out_len: int) -> Tensor:
        return _banded_impl(padded, vec, out_len)

    @staticmethod
    def setup_context(ctx, inputs, output):
        padded, vec, ctx.out_len = inputs
        ctx.save_for_backward(padded, vec)
        ctx.save_for_forward(padded, vec)

    @staticmethod
    def backward(ctx, g):
        padded, vec = ctx.saved_tensors
        d_padded = _full_conv(g, vec, padded.shape[-1]) if ctx.needs_input_grad[0] else None
        d_vec = _banded(padded, g, vec.shape[-1]) if ctx.needs_input_grad[1] else None
        return d_padded, d_vec, None

    @staticmethod
    def jvp(ctx, d_padded, d_vec, _):
        padded, vec = ctx.saved_tensors
        out = None
        if d_padded is not None:
            out = _banded(d_padded, vec, ctx.out_len)
        if d_vec is not None:
            t = _banded(padded, d_vec, ctx.out_len)
            out = t if out is None else out + t
        return out


def _banded(padded: Tensor, vec: Tensor, out_len: int) -> Tensor:
    """``out[p, j] = sum_t padded[p, j + t] vec[p, t]`` for ``j < out_len`` (see :func:`_banded_impl`).

    A banded matrix that fits in one chunk goes to plain autograd (cheaper per call than a custom function,
    and what it saves is at most a chunk); larger ones to :class:`_Banded`.
    """
    if vec.shape[0] * out_len * vec.shape[-1] <= CHUNK_ELEMENTS:
        return _banded_impl(padded, vec, out_len)
    return _Banded.apply(padded, vec, out_len)


def _conv(left: Tensor, right: Tensor, out_len: int) -> Tensor:
    """Truncated convolution ``out[..., j] = sum_i left[..., i] right[..., j - i]`` for ``j < out_len``.

    ``left, right: [B, M, L]`` → ``[B, M, out_len]`` (``L <= out_len <= 2 L - 1``).
    """
    B, M, L = left.shape
    # padded[t] = right[t - (L - 1)], so padded[j + t] = right[j - (L - 1 - t)]: pair with left flipped.
    padded = F.pad(right, (L - 1, out_len - L)).reshape(B * M, out_len + L - 1)
    out = _banded(padded, left.flip(-1).reshape(B * M, L), out_len)
    return out.view(B, M, out_len)


def _corr(outer: Tensor, sibling: Tensor) -> Tensor:
    """Truncated correlation ``out[..., j] = sum_t outer[..., j + t] sibling[..., t]`` for ``j < L``.

    ``outer: [B, M, Lp]`` (parent's outside vector, ``Lp <= 2 L - 1``), ``sibling: [B, M, L]`` → ``[B, M, L]``.
    """
    B, M, Lp = outer.shape
    L = sibling.shape[-1]
    padded = F.pad(outer, (0, 2 * L - 1 - Lp)).reshape(B * M, 2 * L - 1)
    return _banded(padded, sibling.reshape(B * M, L), L).view(B, M, L)


def _normalise(v: Tensor) -> tuple[Tensor, Tensor]:
    """Divide each vector by its maximum; return it and the log of the factor."""
    mx = v.amax(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return v / mx, torch.log(mx.squeeze(-1))


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


def _state_probs(x: Tensor, levels, k: Tensor) -> tuple[Tensor, Tensor]:
    """``Pr(z_i = 0)`` and ``Pr(z_i = 1)`` per leaf of the solved problem, ``[B, N]`` each.

    Differentiable (forward and reverse mode, twice): logs of exact zeros are clamped and masked, never
    ``log 0`` whose derivative would be infinite.
    """
    o, r = _outside_leaves(levels, k)
    tiny = torch.finfo(x.dtype).tiny

    def state(log_p: Tensor, o_j: Tensor) -> Tensor:
        log_w = log_p + torch.log(o_j.clamp_min(tiny)) + r
        return torch.where(o_j > 0, torch.exp(log_w.clamp(max=0.0)), 0.0)

    nu = state(F.logsigmoid(-x), o[..., 0])
    if o.shape[-1] < 2:  # nothing is selected
        return nu, torch.zeros_like(nu)
    return nu, state(F.logsigmoid(x), o[..., 1])


def _marginals_from(x: Tensor, levels, s: _Setup) -> Tensor:
    """``Pr(z_i = 1)`` of the caller's problem, ``[B, n]``: on flipped rows the complement's ``Pr(z_i = 0)``."""
    nu, mu = _state_probs(x, levels, s.kw)
    n = s.free.shape[-1]
    out = torch.where(s.flip.unsqueeze(-1), nu[:, :n], mu[:, :n])
    return torch.where(s.free, out, 0.0)


def _marginals_of(theta: Tensor, s: _Setup) -> Tensor:
    """Marginals as a differentiable function of ``theta`` (the setup held fixed)."""
    x = _work_logits(theta, s)
    return _marginals_from(x, _inside(_leaves(x, s.Kw), s.Kw), s)


# ----------------------------------------------------------------------------------------------------------
# engine interface (no autograd; see functions.py)


def log_partition(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """``log e_k(exp theta)`` per row, ``[B]``."""
    s = _setup(theta, k)
    x = _work_logits(theta, s)
    log_p = _root_value(_inside(_leaves(x, s.Kw), s.Kw), s.kw)
    n = theta.shape[-1]
    # The caller's tilted logits are -x on flipped rows, and its tilt c = delta - ref flips sign likewise.
    sign = torch.where(s.flip, -1.0, 1.0).to(theta.dtype)
    xo = sign.unsqueeze(-1) * x[:, :n]
    # The head is a sum of up to k large logits: accumulate in float64 where the device has it (not MPS).
    acc = torch.float64 if theta.device.type != "mps" else theta.dtype
    c = sign.to(acc) * (s.delta.to(acc) - s.ref.to(acc))
    above = s.free & (xo > 0)
    head = torch.where(above, theta, 0.0).to(acc).sum(-1)
    excess = (above.sum(-1) - k).to(acc)
    excess_c = torch.where(excess != 0, excess * c, 0.0)
    tail = torch.where(s.free, torch.log1p(torch.exp(-xo.abs())), 0.0).sum(-1)
    return (head + excess_c).to(theta.dtype) + log_p + tail


def marginals(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """``Pr(z_i = 1)``, ``[B, n]``."""
    return _marginals_of(theta, _setup(theta, k))


def cov_vec(theta: Tensor, k: Tensor, K: int, v: Tensor) -> Tensor:
    """``Cov(z) v`` per row, ``[B, n]`` (``v [B, n]``; entries of ``v`` on non-free items are ignored)."""
    s = _setup(theta, k)
    v = torch.where(s.free, v, 0.0).contiguous()
    if torch._C._are_functorch_transforms_active():
        # inside torch.func (hessian, jacfwd of the public API) autograd.grad is refused: forward mode there
        # (duals are written into: an expanded, stride-0, input must get its own memory)
        return torch.func.jvp(lambda t: _marginals_of(t, s), (theta.contiguous(),), (v,))[1]
    # Cov is symmetric, so Cov v = J_mu^T v: one reverse pass through the marginals (forward-mode duals trip a
    # torch-internal assertion when this runs inside a compiled backward).
    with torch.enable_grad():
        t = theta.detach().contiguous().requires_grad_(True)
        (out,) = torch.autograd.grad(_marginals_of(t, s), t, grad_outputs=v)
    return torch.where(s.free, out, 0.0)


def cov3(theta: Tensor, k: Tensor, K: int, v: Tensor, w: Tensor) -> Tensor:
    """The third cumulant contracted with two vectors, ``sum_jl kappa_ijl v_j w_l``, ``[B, n]``.

    ``= d/dtheta [w · Cov(z) v]`` (kappa is symmetric): reverse mode over the forward-mode
    covariance-vector product (the setup is held fixed, which is exact: the marginals do not depend on it).
    """
    s = _setup(theta, k)
    v = torch.where(s.free, v, 0.0).contiguous()
    w = torch.where(s.free, w, 0.0)
    with torch.enable_grad():
        t = theta.detach().contiguous().requires_grad_(True)
        cv = torch.func.jvp(lambda u: _marginals_of(u, s), (t,), (v,))[1]
        (out,) = torch.autograd.grad((cv * w).sum(), t)
    return torch.where(s.free, out, 0.0)


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


def _unflip(z: Tensor, s: _Setup) -> Tensor:
    """Samples of the solved problem → the caller's: ``1 - z`` on the free items of flipped rows."""
    return torch.where(s.flip.unsqueeze(-1) & s.free, 1 - z, z)


def uniforms(theta: Tensor, num_samples: int, generator=None) -> Tensor:
    """The uniforms the sampler consumes, ``[S, B, N - 1]`` (``N`` = ``n`` padded to a power of two).

    Column ``M - 1 + j`` serves node ``j`` of the level with ``M`` nodes. They are drawn level by level from
    the root in one ``torch.rand`` call.
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
    ``1 - mu = (1 - p_i) O_i[0]`` comes from the outside pass rather than from a subtraction. The expression
    is the same for a row and its complement, so it is evaluated on the solved problem.
    """
    s = _setup(theta, k)
    x = _work_logits(theta, s)
    levels = _inside(_leaves(x, s.Kw), s.Kw)
    nu, mu = _state_probs(x, levels, s.kw)
    # torch.where evaluates both branches: keep x finite in them (padding and non-free items are -inf).
    xf = torch.where(torch.isfinite(x), x, 0.0)
    term = torch.where(xf >= 0, softplus(-xf) + xf * nu, softplus(xf) - xf * mu)
    term = torch.where(torch.isfinite(x), term, 0.0)
    return _root_value(levels, s.kw) + term.sum(-1)


def sample_given(theta: Tensor, k: Tensor, K: int, u: Tensor) -> Tensor:
    """Exact samples ``[S, B, n]`` int64 in {0, 1} from the uniforms ``u`` of :func:`uniforms`."""
    s = _setup(theta, k)
    x = _work_logits(theta, s)
    return _unflip(_sample_from(_inside(_leaves(x, s.Kw), s.Kw), s.kw, theta.shape[-1], u), s)


def sample(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None) -> Tensor:
    """Exact samples, ``[S, B, n]`` int64 in {0, 1}, with ``k`` ones on free items of each row."""
    return sample_given(theta, k, K, uniforms(theta, num_samples, generator))


def sample_and_marginals_given(theta: Tensor, k: Tensor, K: int, u: Tensor):
    """One inside pass shared by a draw ``[S, B, n]`` (from ``u``) and the marginals ``[B, n]``."""
    s = _setup(theta, k)
    x = _work_logits(theta, s)
    levels = _inside(_leaves(x, s.Kw), s.Kw)
    z = _unflip(_sample_from(levels, s.kw, theta.shape[-1], u), s)
    return z, _marginals_from(x, levels, s)


def sample_and_marginals(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None):
    """One inside pass shared by a draw ``[S, B, n]`` and the marginals ``[B, n]`` (SIMPLE's forward)."""
    return sample_and_marginals_given(theta, k, K, uniforms(theta, num_samples, generator))
