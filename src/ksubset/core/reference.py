"""Reference engine: the original sequential algorithm, kept as test oracle and benchmark baseline.

* ``a[i][j] = log e_j(exp theta_1..i)`` built one item at a time in log space (``n`` sequential steps);
* marginals by autograd of ``a[n][k]``; covariance-vector products by double backward;
* exact sampling by walking the table backwards, item by item:
  ``Pr(z_i = 1 | j still needed) = exp(theta_i + a[i-1][j-1] - a[i][j])``.

It is exact and simple, and slow: use the production engine (:mod:`.tree`, :mod:`.kernels`) for real work.
Same interface as the other engines (canonical problem, see :mod:`._problem`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .numerics import rand

__all__ = [
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
    "table",
]

# A finite stand-in for log 0, so that autograd through logaddexp never meets (-inf) - (-inf).
_LOG_ZERO = -1e30


def _logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """``log(e^a + e^b)`` whose double backward stays finite (torch.logaddexp's gives inf/inf far apart)."""
    m = torch.maximum(a, b).detach()
    return m + torch.log(torch.exp(a - m) + torch.exp(b - m))


def table(theta: Tensor, K: int) -> Tensor:
    """The log-space table ``[n + 1, B, K + 1]`` (row ``i`` = first ``i`` items), differentiable."""
    B, n = theta.shape
    t = torch.where(torch.isfinite(theta), theta, torch.full_like(theta, _LOG_ZERO))
    row = torch.full((B, K + 1), _LOG_ZERO, dtype=theta.dtype, device=theta.device)
    row = torch.cat([torch.zeros_like(row[:, :1]), row[:, 1:]], dim=1)
    rows = [row]
    for i in range(n):
        take = torch.cat([row[:, :1].new_full((B, 1), _LOG_ZERO), row[:, :-1] + t[:, i : i + 1]], dim=1)
        row = _logaddexp(row, take)
        rows.append(row)
    return torch.stack(rows)


def _log_z(theta: Tensor, k: Tensor, K: int) -> Tensor:
    return table(theta, K)[-1].gather(-1, k.unsqueeze(-1)).squeeze(-1)


def log_partition(theta: Tensor, k: Tensor, K: int) -> Tensor:
    return _log_z(theta, k, K)


def _in_func_transform() -> bool:
    """Inside a torch.func transform autograd.grad cannot be used (requires_grad_ is refused), and inside
    compiled code torch.func cannot: each derivative below is written both ways."""
    return torch._C._are_functorch_transforms_active()


def _func_grad(f, t: Tensor) -> Tensor:
    return torch.func.grad(f)(t.detach())


def marginals(theta: Tensor, k: Tensor, K: int) -> Tensor:
    if _in_func_transform():
        return _func_grad(lambda t: _log_z(t, k, K).sum(), theta)
    with torch.enable_grad():
        t = theta.detach().requires_grad_(True)
        (mu,) = torch.autograd.grad(_log_z(t, k, K).sum(), t)
    return mu.detach()


def cov_vec(theta: Tensor, k: Tensor, K: int, v: Tensor) -> Tensor:
    if _in_func_transform():
        v = torch.where(torch.isfinite(theta), v, 0.0)
        mu_of = torch.func.grad(lambda t: _log_z(t, k, K).sum())
        return _func_grad(lambda t: (mu_of(t) * v).sum(), theta)
    with torch.enable_grad():
        t = theta.detach().requires_grad_(True)
        (mu,) = torch.autograd.grad(_log_z(t, k, K).sum(), t, create_graph=True)
        v = torch.where(torch.isfinite(theta), v, 0.0)
        (hv,) = torch.autograd.grad((mu * v).sum(), t)
    return hv.detach()


def cov3(theta: Tensor, k: Tensor, K: int, v: Tensor, w: Tensor) -> Tensor:
    """``sum_jl kappa_ijl v_j w_l`` (third cumulant) by triple differentiation of the table."""
    finite = torch.isfinite(theta)
    v = torch.where(finite, v, 0.0)
    w = torch.where(finite, w, 0.0)
    if _in_func_transform():
        mu_of = torch.func.grad(lambda t: _log_z(t, k, K).sum())
        hv_of = torch.func.grad(lambda t: (mu_of(t) * v).sum())
        return _func_grad(lambda t: (hv_of(t) * w).sum(), theta)
    with torch.enable_grad():
        t = theta.detach().requires_grad_(True)
        (mu,) = torch.autograd.grad(_log_z(t, k, K).sum(), t, create_graph=True)
        (hv,) = torch.autograd.grad((mu * v).sum(), t, create_graph=True)
        (h3,) = torch.autograd.grad((hv * w).sum(), t)
    return h3.detach()


def uniforms(theta: Tensor, num_samples: int, generator=None) -> Tensor:
    """One uniform per item and sample, ``[S, B, n]`` in the logits' dtype."""
    B, n = theta.shape
    return rand((num_samples, B, n), generator, theta.device, theta.dtype)


def sample(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None) -> Tensor:
    return sample_given(theta, k, K, uniforms(theta, num_samples, generator))


def sample_given(theta: Tensor, k: Tensor, K: int, u: Tensor) -> Tensor:
    """Exact samples ``[S, B, n]`` int64 from the uniforms ``u [S, B, n]`` of :func:`uniforms`."""
    B, n = theta.shape
    num_samples = u.shape[0]
    with torch.no_grad():
        a = table(theta, K)  # [n + 1, B, K + 1]
        t = torch.where(torch.isfinite(theta), theta, torch.full_like(theta, _LOG_ZERO))
        need = k.unsqueeze(0).expand(num_samples, B).clone()  # [S, B]
        z = torch.zeros(num_samples, B, n, dtype=torch.int64, device=theta.device)
        for i in range(n, 0, -1):
            j = need
            prev = a[i - 1].unsqueeze(0).expand(num_samples, B, K + 1)
            cur = a[i].unsqueeze(0).expand(num_samples, B, K + 1)
            jm1 = (j - 1).clamp(min=0)
            log_p = t[:, i - 1] + prev.gather(-1, jm1.unsqueeze(-1)).squeeze(-1) - cur.gather(
                -1, j.unsqueeze(-1)
            ).squeeze(-1)
            take = (j > 0) & (u[:, :, i - 1] < torch.exp(log_p))
            z[:, :, i - 1] = take.long()
            need = need - take.long()
    return z


def sample_and_marginals(theta: Tensor, k: Tensor, K: int, num_samples: int, generator=None):
    return sample(theta, k, K, num_samples, generator), marginals(theta, k, K)


def sample_and_marginals_given(theta: Tensor, k: Tensor, K: int, u: Tensor):
    return sample_given(theta, k, K, u), marginals(theta, k, K)


def entropy(theta: Tensor, k: Tensor, K: int) -> Tensor:
    """``H = log Z - theta · mu`` (the textbook formula; fine in float64, the reference's intended dtype)."""
    mu = marginals(theta, k, K)
    return log_partition(theta, k, K) - (torch.where(torch.isfinite(theta), theta, 0.0) * mu).sum(-1)
