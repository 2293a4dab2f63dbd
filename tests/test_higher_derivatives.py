"""Second (and third) derivatives: gradgradcheck on every engine, enumeration, and clear errors beyond.

Before the core became registered operators, ``grad(grad(H + r))`` silently dropped the k-subset part of the
Hessian-vector product (a ``once_differentiable`` backward); these tests fail on that code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import ksubset
from ksubset.core import ops

from oracle import enumerate_row

INF = float("inf")


def _problem():
    """float64 logits with a mask, a +inf (forced) and a -inf item, and per-row k."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 5, generator=g, dtype=torch.float64)
    theta[0, 2] = INF
    theta[1, 4] = -INF
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 1] = False
    k = torch.tensor([3, 2, 3])
    return theta.requires_grad_(True), k, mask


def test_gradgradcheck_public_functions(engine):
    theta, k, mask = _problem()
    other = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    other.requires_grad_(True)
    fns = {
        "log_partition": lambda t: ksubset.log_partition(t, k, mask),
        "marginals": lambda t: ksubset.marginals(t, k, mask),
        "entropy": lambda t: ksubset.entropy(t, k, mask),
    }
    for name, fn in fns.items():
        assert gradgradcheck(fn, (theta,)), name
    # same derivative formulas as marginals/entropy: first order checked here, second by the ones above
    assert gradcheck(lambda t: ksubset.core.sample_and_marginals(t, k, mask)[1], (theta,))
    assert gradcheck(lambda t: ksubset.kl_uniform(t, k, mask), (theta,))
    kl = lambda p, q: ksubset.kl_divergence(p, q, k, mask)  # noqa: E731
    finite = theta.detach().clone()
    finite[0, 2], finite[1, 4] = 0.3, -0.2  # q must allow every subset p does (else KL = +inf)
    finite.requires_grad_(True)
    assert gradgradcheck(kl, (finite, other))


def test_registered_autograd_of_the_operators(engine):
    """The operators' own registered autograd (what torch.compile uses): d^3 log Z via the marginals."""
    theta, k, mask = _problem()
    P = ksubset.core.prepare(theta, k, mask)
    v = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    assert gradcheck(lambda t, w: ops.cov_vec(t, P.k, w, P.engine), (P.theta, v))
    assert gradgradcheck(lambda t: ops.marginals(t, P.k, P.engine), (P.theta,))


def _kappa3(theta: np.ndarray, k: int) -> np.ndarray:
    e = enumerate_row(theta, k)
    d = e.subsets - e.marginals
    return np.einsum("s,si,sj,sl->ijl", e.probs, d, d, d)


@pytest.mark.parametrize("fn", ["entropy", "marginals"])
def test_hessian_vector_products_against_enumeration(engine, fn):
    """grad(grad(f + r)): the k-subset part of the second derivative is present and exact."""
    rng = np.random.default_rng(3)
    n, k = 7, 3
    theta = rng.standard_normal(n) * 1.5
    v, w = rng.standard_normal(n), rng.standard_normal(n)
    e = enumerate_row(theta, k)
    k3 = _kappa3(theta, k)
    t = torch.tensor(theta, requires_grad=True)
    r = (t**3).sum() / 6  # a regulariser whose Hessian is diag(theta)
    if fn == "entropy":
        # H = log Z - theta·mu; d2H = -(Cov + kappa3(theta))
        expected = -(e.covariance @ v + np.einsum("ijl,j,l->i", k3, theta, v)) + theta * v
        total = ksubset.entropy(t, k) + r
    else:
        # d/dtheta (mu · w) = Cov w; its derivative along v is kappa3(w, v)
        expected = np.einsum("ijl,j,l->i", k3, w, v) + theta * v
        total = (ksubset.marginals(t, k) * torch.tensor(w)).sum() + r
    (g,) = torch.autograd.grad(total, t, create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.tensor(v)).sum(), t)
    np.testing.assert_allclose(hv.numpy(), expected, rtol=1e-7, atol=1e-9)


def test_unsupported_orders_raise():
    theta = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    (mu_g,) = torch.autograd.grad(ksubset.log_partition(theta, 2).sum(), theta, create_graph=True)
    (h,) = torch.autograd.grad(mu_g[:, 0].sum(), theta, create_graph=True)
    (t3,) = torch.autograd.grad(h[:, 1].sum(), theta, create_graph=True)  # order 3: supported
    with pytest.raises(RuntimeError, match="order 4 of log_partition"):
        torch.autograd.grad(t3[:, 2].sum(), theta)
    with pytest.raises(RuntimeError, match="order 3 of marginals"):
        torch.func.jacrev(torch.func.jacrev(torch.func.jacrev(lambda t: ksubset.marginals(t, 2))))(theta[0])
