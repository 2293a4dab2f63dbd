"""The inverse map: logits whose k-subset distribution has prescribed inclusion probabilities.

Given ``pi [..., n]`` with ``0 <= pi_i <= 1`` and ``sum_i pi_i = k``, :func:`logits_from_marginals` returns
``theta`` with ``marginals(theta, k) = pi``: the maximum-entropy (conditional Poisson) sampling design with
inclusion probabilities ``pi``. ``theta`` minimises the convex ``f(theta) = log Z(theta) - theta · pi``
(gradient ``mu(theta) - pi``, Hessian ``Cov(z)``), found by Newton's method whose linear systems
``Cov(z) d = pi - mu`` are solved by preconditioned conjugate gradients using only covariance-vector products
(the vector-Jacobian product of :func:`ksubset.core.marginals`, ``O(nk)`` each; never an ``n × n`` matrix).

Normalisation: ``theta`` is defined up to a shift; the result has ``sum_i sigmoid(theta_i) = k``, so
``sigmoid(theta)`` are the inclusion probabilities of the Poisson design that, conditioned on ``|z| = k``,
gives ``pi`` (the "pi tilde" of the survey-sampling literature). ``pi_i = 0`` (or ``mask`` False) gives
``-inf``, ``pi_i = 1`` gives ``+inf``.

Differentiable in ``pi`` by the implicit function theorem: on the tangent space ``sum dpi = 0``,
``dtheta = (I - 1 w^T) Cov^+ dpi`` with ``w = sigmoid'(theta) / sum sigmoid'(theta)`` (the normalisation), so
the backward pass is one more conjugate-gradient solve, ``dL/dpi = Cov^+ (g - w sum g)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import inference as _exact
from ._problem import check_k, check_mask
from .cardinality.problem import tilt_to

__all__ = ["logits_from_marginals", "sample_from_marginals", "InverseMapStats"]


class InverseMapStats(dict):
    """What the last solve did: ``newton`` steps, ``corrections`` (per-item logit steps before Newton), ``cg``
    total CG iterations (covariance-vector products), ``marginal_passes``, ``residual`` (max ``|mu - pi|``)."""


def _check_pi(pi: object, k: object, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    if not isinstance(pi, Tensor):
        raise TypeError(f"pi must be a torch.Tensor, got {type(pi).__name__}")
    if not pi.is_floating_point():
        raise TypeError(f"pi must have a floating-point dtype, got {pi.dtype}")
    if pi.dim() == 0 or pi.shape[-1] == 0:
        raise ValueError(f"pi must have the items in its last dimension, got shape {tuple(pi.shape)}")
    mask = check_mask(mask, pi)
    kt = check_k(k, pi.shape[:-1], pi.device)
    p = pi.detach().to(torch.float64)
    if bool(torch.isnan(p).any()):
        raise ValueError("pi contains NaN")
    bad = (p < 0) | (p > 1)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"pi must lie in [0, 1] (inclusion probabilities), got pi{list(idx)} = {p[idx].item()}")
    if mask is not None and bool((p[~mask] != 0).any()):
        raise ValueError("pi must be 0 on masked-out items (mask == False)")
    n = p.shape[-1]
    total = p.sum(-1)
    tol = 4 * max(n, 16) * torch.finfo(pi.dtype).eps * kt.clamp(min=1).to(torch.float64)
    off = (total - kt).abs() > tol
    if bool(off.any()):
        i = torch.nonzero(off.reshape(-1)).flatten()[0]
        raise ValueError(
            f"pi must sum to k in every row (a k-subset design has sum_i pi_i = k): row {int(i)} sums to "
            f"{total.reshape(-1)[i].item():.12g}, k = {int(kt.reshape(-1)[i])}"
        )
    return p, kt, mask


def _pcg(apply_cov, b: Tensor, diag: Tensor, free: Tensor, rtol: Tensor, max_iter: int) -> tuple[Tensor, int]:
    """Jacobi-preconditioned CG for ``Cov x = b`` per row (``b ⊥ 1`` on the free items); ``x ⊥ 1``.

    Stops a row when ``||r|| <= rtol * ||b||``. Returns ``x [B, n]`` and the number of products used.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    z = torch.where(free, r / diag, 0.0)
    p = z.clone()
    rz = (r * z).sum(-1)
    target = rtol * torch.linalg.vector_norm(b, dim=-1)
    used = 0
    for _ in range(max_iter):
        active = torch.linalg.vector_norm(r, dim=-1) > target
        if not bool(active.any()):
            break
        ap = apply_cov(p)
        used += 1
        pap = (p * ap).sum(-1)
        alpha = torch.where(active & (pap > 0), rz / torch.where(pap > 0, pap, 1.0), 0.0).unsqueeze(-1)
        x = x + alpha * p
        r = r - alpha * ap
        z = torch.where(free, r / diag, 0.0)
        rz_new = (r * z).sum(-1)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1.0), 0.0).unsqueeze(-1)
        p = z + beta * p
        rz = rz_new
    x = torch.where(free, x, 0.0)
    x = x - free * (x.sum(-1, keepdim=True) / free.sum(-1, keepdim=True).clamp(min=1))
    return x, used


class _Marginals:
    """``mu(theta)`` with its covariance-vector product, counting the passes."""

    def __init__(self, k: Tensor):
        self.k, self.passes, self.products = k, 0, 0

    def at(self, theta: Tensor):
        th = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            mu = _exact.marginals(th, self.k)
        self.passes += 1

        def cov(v: Tensor) -> Tensor:
            self.products += 1
            return torch.autograd.grad(mu, th, v, retain_graph=True)[0]

        return mu.detach(), cov


#: Largest change of one logit in one step (keeps an item whose marginal underflowed from jumping far).
MAX_CORRECTION = 30.0


#: Items with pi (1 - pi) below this are updated per item, not through the Newton–CG system.
STIFF = 1e-6
#: Backtracking halvings per Newton step.
MAX_HALVINGS = 12
#: Items with pi below this are polished to relative accuracy RELATIVE_TOL (in logit), at most MAX_POLISH passes.
SMALL_PI = 1e-3
RELATIVE_TOL = 1e-9
MAX_POLISH = 10


def _logit(x: Tensor) -> Tensor:
    x = x.clamp(1e-300, 1.0)
    return torch.log(x) - torch.log1p(-x.clamp(max=1 - 1e-16))


def _solve(p: Tensor, k: Tensor, free: Tensor, *, tol: float, max_newton: int, max_cg: int):
    """Newton–CG on ``[B, n]`` float64. Returns ``theta`` (with ±inf), the final marginals and statistics.

    1. Start at ``logit(pi)`` (the Poisson design) and take fixed-point steps ``pt <- pt + pi - mu`` on
       ``pt = sigmoid(theta)`` (the iteration of R's ``sampling::UPMEpiktildefrompik``; one marginal pass
       each) while they at least halve ``max |pi - mu|``: for weakly coupled items this converges in a few
       passes; when it stops contracting (strongly coupled items), Newton takes over.
    2. Damped Newton: ``Cov d = pi - mu`` by Jacobi-preconditioned CG, backtracking until the residual falls.
    3. Polish: the absolute residual hardly sees items with tiny ``pi`` (their logits are nearly free
       directions of the objective), so once it is met, those items get per-item corrections until their
       marginals are right in *relative* terms too (for such items the correction is nearly exact).
    """
    ev = _Marginals(k)
    target = _logit(p)
    theta = torch.where(free, target, torch.where(p >= 1, math.inf, -math.inf))
    mu, cov = ev.at(theta)
    res = torch.where(free, p - mu, 0.0)
    err = res.abs().amax(-1)
    diag = torch.where(free, (p * (1 - p)).clamp(min=1e-300), 1.0)  # Cov's diagonal at the solution
    stiff = free & (diag < STIFF)
    cg_total, newton, corrections, polish = 0, 0, 0, 0
    last_gap = math.inf
    while True:
        gap = torch.where(free, target - _logit(mu), 0.0)
        if not bool((err > tol).any()):
            small = free & (p < SMALL_PI) & (gap.abs() > RELATIVE_TOL)
            if polish >= MAX_POLISH or not bool(small.any()):
                break
            polish += 1
            theta = torch.where(small, theta + gap.clamp(-MAX_CORRECTION, MAX_CORRECTION), theta)
        elif newton + corrections >= max_newton:
            raise RuntimeError(
                f"logits_from_marginals did not reach max|mu - pi| <= {tol:g} in {max_newton} iterations "
                f"(reached {float(err.max()):.3g}); raise max_iter or loosen tol"
            )
        elif newton == 0 and float(err.max()) < last_gap:
            # (the per-item corrections overshoot between strongly coupled items: once they stop shrinking
            # the largest gap, Newton takes over)
            corrections += 1
            last_gap = float(err.max())
            # the fixed point of UPMEpiktildefrompik (R package sampling) on pt = sigmoid(theta):
            # pt <- pt + pi - mu, kept inside (0, 1)
            pt = torch.sigmoid(theta) + res
            s = torch.sigmoid(theta)
            pt = torch.minimum(torch.maximum(pt, s * 1e-3), 1 - (1 - s) * 1e-3)  # at most 7 nats per step
            previous = theta, mu, cov, res, err
            theta = torch.where(free & (err > tol).unsqueeze(-1), _logit(pt), theta)
            mu, cov = ev.at(theta)
            new_gap = float(torch.where(free, p - mu, 0.0).abs().max())
            if new_gap >= 0.5 * last_gap:  # not contracting: leave it to Newton
                theta, mu, cov, res, err = previous
                last_gap = 0.0  # stop correcting; go to Newton
                continue
            res = torch.where(free, p - mu, 0.0)
            err = res.abs().amax(-1)
            continue
        else:
            newton += 1
            # Newton–CG on the well-conditioned items only: for an item with tiny variance pi (1 - pi) the
            # covariance-vector product (exact to rounding in absolute terms) has no correct digits relative
            # to that variance, so such "stiff" items take their nearly exact per-item correction instead
            # (they are nearly decoupled from the rest: their covariances are at most their variance).
            soft = free & ~stiff
            b = torch.where(soft, res, 0.0)
            b = b - soft * (b.sum(-1, keepdim=True) / soft.sum(-1, keepdim=True).clamp(min=1))

            def cov_soft(v: Tensor, cov=cov, soft=soft) -> Tensor:
                return torch.where(soft, cov(torch.where(soft, v, 0.0)), 0.0)

            d, used = _pcg(cov_soft, b, diag, soft, err.clamp(min=1e-3 * tol, max=0.1), max_cg)
            cg_total += used
            d = torch.where(stiff, gap, d)
            d = torch.where(err.unsqueeze(-1) > tol, d, 0.0).clamp(-MAX_CORRECTION, MAX_CORRECTION)
            t = torch.ones_like(err)
            norm = torch.linalg.vector_norm(res, dim=-1)
            for _ in range(MAX_HALVINGS):  # backtrack until the residual falls (usually the full step)
                trial = torch.where(free, theta + t.unsqueeze(-1) * d, theta)
                mu_t, cov_t = ev.at(trial)
                res_t = torch.where(free, p - mu_t, 0.0)
                better = (torch.linalg.vector_norm(res_t, dim=-1) < norm) | (err <= tol)
                if bool(better.all()):
                    break
                t = torch.where(better, t, t / 2)
            theta, mu, cov, res = trial, mu_t, cov_t, res_t
            err = res.abs().amax(-1)
            continue
        mu, cov = ev.at(theta)
        res = torch.where(free, p - mu, 0.0)
        err = res.abs().amax(-1)
    stats = {
        "newton": newton, "corrections": corrections, "polish": polish, "cg": cg_total,
        "marginal_passes": ev.passes,
    }
    return theta, mu, cov, stats


def _normalise(theta: Tensor, free: Tensor, k_free: Tensor) -> Tensor:
    """Shift the free logits so that ``sum sigmoid(theta) = k_free`` (exactly invariant)."""
    fin = torch.where(free, theta, -math.inf)
    c = tilt_to(fin, k_free.to(theta.dtype))
    for _ in range(3):  # polish the shift to rounding level
        s = torch.where(free, torch.sigmoid(fin + c.unsqueeze(-1)), 0.0)
        fp = (s * (1 - s)).sum(-1)
        c = c - torch.where(fp > 0, (s.sum(-1) - k_free) / torch.where(fp > 0, fp, 1.0), 0.0)
    return torch.where(free, theta + c.unsqueeze(-1), theta)


class _InverseMap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pi_in: Tensor, p: Tensor, k: Tensor, free: Tensor, tol, max_newton, max_cg, stats):
        theta, mu, _, info = _solve(p, k, free, tol=tol, max_newton=max_newton, max_cg=max_cg)
        k_free = (k - (p >= 1).sum(-1)).to(p.dtype)
        theta = _normalise(theta, free, k_free)
        if stats is not None:
            mu_final = _exact.marginals(theta, k)
            info["residual"] = float(torch.where(free, mu_final - p, 0.0).abs().max()) if p.numel() else 0.0
            stats.update(info)
        ctx.save_for_backward(theta, k, free)
        ctx.max_cg, ctx.dtype = max_cg, pi_in.dtype
        return theta.to(pi_in.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        theta, k, free = ctx.saved_tensors
        g = torch.where(free, g.to(theta.dtype), 0.0)
        s = torch.where(free, torch.sigmoid(theta), 0.0)
        w = s * (1 - s)
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-300)
        rhs = g - w * g.sum(-1, keepdim=True)
        mu, cov = _Marginals(k).at(theta)
        diag = torch.where(free, (mu * (1 - mu)).clamp(min=1e-300), 1.0)
        x, _ = _pcg(cov, rhs, diag, free, torch.full_like(rhs[:, 0], 1e-13), ctx.max_cg)
        return x.to(ctx.dtype), None, None, None, None, None, None, None


def logits_from_marginals(
    pi: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    tol: float = 1e-12,
    max_iter: int = 50,
    max_cg: int = 200,
    stats: dict | None = None,
) -> Tensor:
    """Logits ``theta [..., n]`` of the k-subset distribution with inclusion probabilities ``pi [..., n]``.

    Args:
        pi: target inclusion probabilities in ``[0, 1]`` summing to ``k`` per row (0 → ``-inf`` logit,
            1 → ``+inf``); any batch shape.
        k: int or integer tensor broadcastable to ``pi.shape[:-1]``.
        mask: optional bool ``[..., n]``; masked-out items must have ``pi = 0``.
        tol: stop when ``max |marginals(theta, k) - pi| <= tol`` in every row (computed in float64).
        max_iter / max_cg: Newton steps / CG iterations per step before giving up (``RuntimeError``).
        stats: a dict to fill with ``newton``, ``cg``, ``marginal_passes`` and ``residual``.

    Returns ``theta`` in ``pi``'s dtype, normalised so that ``sum_i sigmoid(theta_i) = k``; differentiable in
    ``pi`` (implicit function theorem; see the module docstring). Raises ``ValueError`` for infeasible ``pi``.
    """
    p, kt, mask = _check_pi(pi, k, mask)
    n = p.shape[-1]
    batch = p.shape[:-1]
    pf = p.reshape(-1, n)
    if mask is not None:
        pf = torch.where(mask.reshape(-1, n), pf, 0.0)
    # pi must sum to k exactly inside: spread the (tolerated) rounding over the free items
    free = (pf > 0) & (pf < 1)
    kf = kt.reshape(-1)
    gap = kf.to(pf.dtype) - pf.sum(-1)
    pf = torch.where(free, pf + gap.unsqueeze(-1) * pf * (1 - pf) / (pf * (1 - pf)).sum(-1, keepdim=True).clamp(
        min=1e-300), pf)
    theta = _InverseMap.apply(pi, pf, kf, free, float(tol), int(max_iter), int(max_cg), stats)
    return theta.reshape(*batch, n)


def sample_from_marginals(
    pi: Tensor,
    k: int | Tensor,
    mask: Tensor | None = None,
    *,
    sample_shape=(),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact draws ``[*sample_shape, ..., n]`` of k-subsets with inclusion probabilities ``pi`` (the
    maximum-entropy design): ``sample(logits_from_marginals(pi, k, mask), k, mask, ...)``."""
    with torch.no_grad():
        theta = logits_from_marginals(pi.detach(), k, mask)
    return _exact.sample(theta, k, mask, sample_shape=sample_shape, generator=generator)
