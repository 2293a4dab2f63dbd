"""Exact inference for ``p(z) ∝ exp(theta · z + phi[|z|])`` (count-constrained subsets).

Shapes: ``logits [..., n]``; ``counts`` an int (exactly k), an integer tensor, or a count constraint
(:class:`Exactly`, :class:`AtMost`, :class:`Between`, :class:`CountPotential`); ``mask [..., n]`` bool. The
count axis of :func:`count_distribution` and of ``phi`` is the *total* count ``|z|`` (forced items
included). ``±inf`` logits and masks behave as for exactly-k.

How: each row is shifted by ``c`` (``theta + c`` with ``phi[j] - j c``, an identity) and the items become
Bernoulli(``sigmoid(theta_i + c)``); :func:`.table.log_count_table` gives ``log Q_j = log Pr(S = j)`` in log
space, and ``log Z = log sum_j exp(phi_j - j c + log Q_j) + sum_i softplus(theta_i + c)``. Marginals are the
derivatives of that log-sum-exp with respect to the items' log-weights (non-negative sums, full relative
precision); ``Cov(z) v`` is their vector-Jacobian product (autograd through the tree). All ``O(nK)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import inference as _exact
from .._problem import check_logits
from .problem import CountProblem, prepare_counts
from .table import log_count_table, safe_logsumexp, softplus

__all__ = [
    "log_partition",
    "marginals",
    "count_distribution",
    "sample",
    "sample_and_marginals",
    "log_prob",
    "entropy",
    "kl_divergence",
    "mode",
]


def _evaluate(P: CountProblem, *, grads: bool, create_graph: bool) -> dict[str, Tensor]:
    """The free-item quantities of a row batch: ``log_a, log_q, log_pi, x`` and, with ``grads``, ``mu, nu``.

    ``log_pi [B, K+1]``: law of the number of free items chosen; ``mu``/``nu [B, n]``: Pr(z_i = 1)/Pr(z_i = 0)
    of the free items (0 and 1 on the others). ``create_graph`` keeps them differentiable in theta and phi.
    """
    dt, dev = P.theta.dtype, P.theta.device
    with torch.enable_grad():
        x = P.theta + P.c.unsqueeze(-1)
        xs = torch.where(P.free, x, 0.0)  # finite stand-in: keeps NaN out of every derivative
        l0 = torch.where(P.free, -softplus(xs), 0.0)  # log(1 - p)
        l1 = torch.where(P.free, -softplus(-xs), -math.inf)  # log p
        if grads and not l0.requires_grad:
            l0, l1 = l0.requires_grad_(), l1.requires_grad_()
        log_q = log_count_table(l0, l1, P.K)
        j = torch.arange(P.K + 1, device=dev, dtype=dt)
        a = (P.phi - j * P.c.unsqueeze(-1)) + log_q
        log_a = safe_logsumexp(a)
        out = {"x": xs, "log_q": log_q, "log_a": log_a, "log_pi": a - log_a.unsqueeze(-1)}
        if grads:
            nu, mu = torch.autograd.grad(log_a.sum(), (l0, l1), create_graph=create_graph)
            out.update(mu=mu, nu=nu)
    if not create_graph:
        out = {key: val.detach() for key, val in out.items()}
    return out


def _wants_graph(P: CountProblem) -> bool:
    return torch.is_grad_enabled() and (P.theta.requires_grad or P.phi.requires_grad)


def _log_z_value(P: CountProblem, q: dict[str, Tensor]) -> Tensor:
    return q["log_a"] + torch.where(P.free, softplus(q["x"]), 0.0).sum(-1)


class _LogPartition(torch.autograd.Function):
    """``log Z`` ``[B]`` whose backward is ``(g mu, g pi)``, with ``mu`` and ``pi`` themselves differentiable
    (so Hessian-vector products work) and ``mu`` to full relative precision."""

    @staticmethod
    def forward(ctx, theta: Tensor, phi: Tensor, P: CountProblem) -> Tensor:
        ctx.P = P
        ctx.save_for_backward(theta, phi)
        with torch.no_grad():
            return _log_z_value(P, _evaluate(P, grads=False, create_graph=False))

    @staticmethod
    def backward(ctx, g: Tensor):
        theta, phi = ctx.saved_tensors
        P = CountProblem(**{**ctx.P.__dict__, "theta": theta, "phi": phi})
        q = _evaluate(P, grads=True, create_graph=torch.is_grad_enabled())
        g = g.unsqueeze(-1)
        return g * q["mu"], g * torch.exp(q["log_pi"]), None


def _log_z(P: CountProblem) -> Tensor:
    return _LogPartition.apply(P.theta, P.phi, P)


def _to_total(P: CountProblem, log_pi_free: Tensor) -> Tensor:
    """Law over free counts ``[B, K+1]`` → law over total counts ``[B, K_total+1]`` (shift by #forced)."""
    j = torch.arange(P.K_total + 1, device=log_pi_free.device)
    src = j - P.n_forced.unsqueeze(-1)
    ok = (src >= 0) & (src <= P.K)
    return torch.where(ok, log_pi_free.gather(-1, src.clamp(0, P.K)), -math.inf)


def log_partition(logits: Tensor, counts, mask: Tensor | None = None) -> Tensor:
    """``log sum_z exp(theta · z + phi[|z|])`` per row ``[...]`` over the free items; differentiable in the
    logits (gradient = marginals) and in ``CountPotential``'s phi (gradient = count law)."""
    P = prepare_counts(logits, counts, mask)
    return _log_z(P).reshape(P.batch_shape).to(P.dtype)


def marginals(logits: Tensor, counts, mask: Tensor | None = None) -> Tensor:
    """``Pr(z_i = 1)`` ``[..., n]``; differentiable (vector-Jacobian product in the logits = ``Cov(z) g``)."""
    P = prepare_counts(logits, counts, mask)
    mu = _evaluate(P, grads=True, create_graph=_wants_graph(P))["mu"] + P.forced.to(P.theta.dtype)
    return P.unflatten(mu).to(P.dtype)


def count_distribution(logits: Tensor, counts, mask: Tensor | None = None) -> Tensor:
    """The law of the total count, ``Pr(|z| = j)`` for ``j = 0..K`` ``[..., K + 1]``; differentiable.

    ``K`` is the constraint's largest count (capped at ``n``): ``k`` for ``Exactly``/``AtMost``, ``b`` for
    ``Between``, ``phi.shape[-1] - 1`` for ``CountPotential``.
    """
    P = prepare_counts(logits, counts, mask)
    log_pi = _evaluate(P, grads=False, create_graph=_wants_graph(P))["log_pi"]
    return P.unflatten(torch.exp(_to_total(P, log_pi))).to(P.dtype)


_SampleShape = int | Sequence[int] | torch.Size


def _draw(P: CountProblem, log_pi: Tensor, sample_shape: _SampleShape, generator) -> Tensor:
    """Exact draws ``[*sample_shape, *batch, n]``: the count from its law, then an exact subset of that size."""
    shape = torch.Size((sample_shape,) if isinstance(sample_shape, int) else sample_shape)
    S = math.prod(shape)
    B, n = P.theta.shape
    with torch.no_grad():
        probs = torch.exp(log_pi.double())
        if S == 0 or B == 0:
            j = torch.zeros(S, B, dtype=torch.int64, device=P.theta.device)
        else:
            j = torch.multinomial(probs, S, replacement=True, generator=generator).T  # [S, B]
        theta = P.theta.detach().unsqueeze(0).expand(S, B, n)
        z = _exact.sample(theta, j, generator=generator).bool() if S * B else theta.new_zeros(S, B, n).bool()
        z = (z | P.forced).to(P.dtype)
    return z.reshape(*shape, *P.batch_shape, n)


def sample(
    logits: Tensor,
    counts,
    mask: Tensor | None = None,
    *,
    sample_shape: _SampleShape = (),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact draws ``[*sample_shape, ..., n]`` (0/1 in the logits' dtype) from ``p(z) ∝ exp(theta·z + phi[|z|])``."""
    P = prepare_counts(logits, counts, mask)
    log_pi = _evaluate(P, grads=False, create_graph=False)["log_pi"]
    return _draw(P, log_pi, sample_shape, generator)


def sample_and_marginals(
    logits: Tensor,
    counts,
    mask: Tensor | None = None,
    *,
    sample_shape: _SampleShape = (),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact draws and differentiable marginals from one pass (the building block of SIMPLE)."""
    P = prepare_counts(logits, counts, mask)
    q = _evaluate(P, grads=True, create_graph=_wants_graph(P))
    z = _draw(P, q["log_pi"].detach(), sample_shape, generator)
    mu = q["mu"] + P.forced.to(P.theta.dtype)
    return z, P.unflatten(mu).to(P.dtype)


def log_prob(logits: Tensor, counts, z: Tensor, mask: Tensor | None = None, *, validate: bool = False) -> Tensor:
    """``theta · z + phi[|z|] - log Z`` per row ``[...]`` (``z [..., n]`` broadcasts against the logits);
    ``-inf`` where ``z`` is not in the support (a forbidden count, an unavailable item, a missed forced item),
    or ``ValueError`` there with ``validate=True``."""
    logits = check_logits(logits)
    z = _exact._check_z(z, logits)
    P = prepare_counts(logits, counts, mask)
    zc = z.to(P.theta.dtype)
    free, forced = P.unflatten(P.free), P.unflatten(P.forced)
    binary = ((zc == 0) | (zc == 1)).all(-1)
    ok = binary & torch.where(free | forced, True, zc == 0).all(-1) & torch.where(forced, zc == 1, True).all(-1)
    j = (zc * free).sum(-1).round().long().clamp(0, P.K)
    phi = P.unflatten(P.phi).expand(*j.shape, P.K + 1)
    phi_j = phi.gather(-1, j.unsqueeze(-1)).squeeze(-1)
    ok = ok & ((zc * free).sum(-1) <= P.K) & (phi_j > -math.inf)
    if validate and not bool(ok.all()):
        raise ValueError("z is not in the support of the count-constrained distribution in every row")
    score = (P.unflatten(torch.where(P.free, P.theta, 0.0)) * zc).sum(-1) + torch.where(ok, phi_j, 0.0)
    lp = score - _log_z(P).reshape(P.batch_shape)
    return torch.where(ok, lp, -math.inf).to(P.dtype)


def _entropy(P: CountProblem, create_graph: bool) -> Tensor:
    """``H = sum_i [mu_i softplus(-x_i) + nu_i softplus(x_i)] + H(count) + sum_j pi_j log Q_j`` ``[B]``.

    With ``p = q_Bernoulli(x) e^{psi(|z|)} / A`` this is ``E[-log q] + E[log A - psi]``; the first sum has
    non-negative terms and the shift ``c`` keeps it small, so large logits do not cancel catastrophically.
    """
    q = _evaluate(P, grads=True, create_graph=create_graph)
    x = q["x"]
    items = torch.where(P.free, q["mu"] * softplus(-x) + q["nu"] * softplus(x), 0.0).sum(-1)
    pos = q["log_pi"] > -math.inf
    log_pi = torch.where(pos, q["log_pi"], 0.0)
    log_q = torch.where(pos, q["log_q"], 0.0)
    pi = torch.exp(log_pi) * pos
    return items + (pi * (log_q - log_pi)).sum(-1)


def entropy(logits: Tensor, counts, mask: Tensor | None = None) -> Tensor:
    """Exact entropy per row ``[...]``; differentiable in the logits and phi."""
    P = prepare_counts(logits, counts, mask)
    return _entropy(P, _wants_graph(P)).reshape(P.batch_shape).to(P.dtype)


def _count_range(P: CountProblem) -> tuple[Tensor, Tensor]:
    """Smallest and largest allowed number of free items per row ``[B]`` (structural, not numerical)."""
    j = torch.arange(P.K + 1, device=P.phi.device)
    allowed = (P.phi.detach() > -math.inf) & (j <= P.n_free.unsqueeze(-1))
    lo = torch.where(allowed, j, P.K + 1).amin(-1)
    hi = torch.where(allowed, j, -1).amax(-1)
    return lo, hi


def kl_divergence(
    p_logits: Tensor, q_logits: Tensor, counts, mask: Tensor | None = None, *, q_counts=None
) -> Tensor:
    """Exact ``KL(p || q)`` ``[...]`` between two count-constrained distributions on the same items.

    ``counts`` is p's constraint and also q's unless ``q_counts`` is given; ``mask`` applies to both (the
    argument order of the exactly-k :func:`ksubset.kl_divergence`). ``+inf`` where ``p`` puts mass outside
    ``q``'s support. Written without the large cancelling terms ``theta · mu`` and ``log Z``: with both rows
    shifted and ``x_q`` q's shifted logits,
    ``KL = -H(p) + sum_i [mu_i softplus(-x_q,i) + nu_i softplus(x_q,i)] + sum_j pi_j (log Q_q,j - log pi_q,j)``.
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
    P = prepare_counts(p_logits.expand(shape), counts, mask, name="p_logits")
    Q = prepare_counts(q_logits.expand(shape), counts if q_counts is None else q_counts, mask, name="q_logits")
    graph = _wants_graph(P) or _wants_graph(Q)
    dt = P.theta.dtype
    qp = _evaluate(P, grads=True, create_graph=graph)
    qq = _evaluate(Q, grads=False, create_graph=graph)
    # Bernoulli cross-entropy of q's shifted items under p's marginals (q-free items only; q's forced and
    # unavailable items add nothing to log q on its support)
    mu_p = torch.where(P.free, qp["mu"], P.forced.to(dt))
    nu_p = torch.where(P.free, qp["nu"], (~P.forced).to(dt))
    xq = qq["x"].to(dt)
    items = torch.where(Q.free, mu_p * softplus(-xq) + nu_p * softplus(xq), 0.0).sum(-1)
    # count term over p's total counts j, at q's free count j - #forced_q
    log_pi_p = _to_total(P, qp["log_pi"])
    jq = torch.arange(P.K_total + 1, device=P.phi.device) - Q.n_forced.unsqueeze(-1)
    inq = (jq >= 0) & (jq <= Q.K)
    gather = lambda t: torch.where(inq, t.to(dt).gather(-1, jq.clamp(0, Q.K)), -math.inf)  # noqa: E731
    log_q_q, log_pi_q = gather(qq["log_q"]), gather(qq["log_pi"])
    pos = log_pi_p > -math.inf
    count_bad = (pos & (log_pi_q == -math.inf)).any(-1)
    ok = pos & (log_pi_q > -math.inf)
    pi_p = torch.exp(torch.where(ok, log_pi_p, -math.inf))
    counts_term = (pi_p * torch.where(ok, log_q_q - log_pi_q, 0.0)).sum(-1)
    kl = items + counts_term - _entropy(P, graph)
    lo, hi = _count_range(P)
    may_select = P.forced | (P.free & (hi > 0).unsqueeze(-1))
    must_select = P.forced | (P.free & (lo == P.n_free).unsqueeze(-1))
    bad = (may_select & ~Q.available).any(-1) | (Q.forced & ~must_select).any(-1) | count_bad
    kl = torch.where(bad, math.inf, kl)
    return kl.reshape(P.batch_shape).to(P.dtype)


def mode(logits: Tensor, counts, mask: Tensor | None = None) -> Tensor:
    """The most probable subset ``[..., n]``: the count ``j`` maximising ``phi'_j + (sum of the top j free
    logits)``, then those top ``j`` items (plus the forced ones). Ties go to the smaller count."""
    P = prepare_counts(logits, counts, mask)
    with torch.no_grad():
        B, n = P.theta.shape
        th = P.theta.detach()
        K = P.K
        top = th.topk(K, dim=-1).values if K > 0 else th[:, :0]
        prefix = torch.cat([th.new_zeros(B, 1), torch.cumsum(top, -1)], -1)  # sum of the top j, -inf past n_free
        score = P.phi.detach() + prefix
        j = score.argmax(-1)
        z = torch.zeros_like(th)
        if K > 0:
            idx = th.topk(K, dim=-1).indices
            keep = torch.arange(K, device=th.device) < j.unsqueeze(-1)
            z.scatter_(-1, idx, keep.to(z.dtype))
        z = (z.bool() | P.forced).to(P.dtype)
    return P.unflatten(z)
