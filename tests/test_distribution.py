"""KSubset as a torch.distributions.Distribution, against the enumeration oracle, on every engine."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import kl_divergence

import ksubset
from ksubset import KSubset

from oracle import enumerate_row, kl_rows


def test_methods_match_functions_and_oracle(engine):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    k = torch.tensor([[1, 3, 5], [2, 2, 7]])
    d = KSubset(theta, k)
    assert d.batch_shape == (2, 3) and d.event_shape == (7,)
    e = enumerate_row(theta[1, 0].numpy(), 2)
    assert abs(float(d.log_partition[1, 0]) - e.log_z) < 1e-10
    assert torch.allclose(d.mean[1, 0], torch.tensor(e.marginals), atol=1e-12)
    assert torch.allclose(d.variance[1, 0], torch.tensor(e.marginals * (1 - e.marginals)), atol=1e-12)
    assert abs(float(d.entropy()[1, 0]) - e.entropy) < 1e-10
    assert torch.equal(d.mode, ksubset.mode(theta, k))
    s = d.sample((4,))
    assert s.shape == (4, 2, 3, 7) and torch.equal(s.sum(-1).long(), k.expand(4, 2, 3))
    lp = d.log_prob(s)
    assert lp.shape == (4, 2, 3) and torch.isfinite(lp).all()


def test_rsample_is_simple_and_differentiable(engine):
    theta = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    d = KSubset(theta, 3)
    z = d.rsample((5,))
    assert z.shape == (5, 3, 8) and (z.sum(-1) == 3).all()
    z.sum().backward()  # sum(z) = k is constant: Cov · 1 = 0
    assert torch.allclose(theta.grad, torch.zeros_like(theta), atol=1e-12)
    # the gradient of rsample is SIMPLE's: Cov(z) g per row, summed over the sample dimension
    theta.grad = None
    g = torch.randn(5, 3, 8, dtype=torch.float64)
    d.rsample((5,), generator=torch.Generator().manual_seed(0)).backward(g)
    for b in range(3):
        cov = torch.from_numpy(enumerate_row(theta[b].detach().numpy(), 3).covariance)
        torch.testing.assert_close(theta.grad[b], cov @ g[:, b].sum(0), rtol=1e-9, atol=1e-11)


def test_kl_registered_and_exact(engine):
    g = torch.Generator().manual_seed(1)
    p, q = torch.randn(2, 6, generator=g, dtype=torch.float64), torch.randn(2, 6, generator=g, dtype=torch.float64)
    kl = kl_divergence(KSubset(p, 3), KSubset(q, 3))
    for b in range(2):
        assert abs(float(kl[b]) - kl_rows(p[b].numpy(), q[b].numpy(), 3)) < 1e-10
    with pytest.raises(ValueError, match="same k"):
        kl_divergence(KSubset(p, 3), KSubset(q, 2))


def test_kl_with_masks_and_incompatible_supports(engine):
    p = torch.randn(6, dtype=torch.float64)
    m1 = torch.tensor([True, True, True, True, False, True])
    kl_same = kl_divergence(KSubset(p, 2, m1), KSubset(p * 2, 2, m1))
    masked = torch.where(m1, p, float("-inf"))
    assert abs(float(kl_same) - kl_rows(masked.numpy(), torch.where(m1, 2 * p, float("-inf")).numpy(), 2)) < 1e-10
    # q cannot select an item p may select: infinite
    assert kl_divergence(KSubset(p, 2), KSubset(p, 2, m1)) == float("inf")
    # p cannot select an item q may select: finite
    assert torch.isfinite(kl_divergence(KSubset(p, 2, m1), KSubset(p, 2)))


def test_expand_and_validate_args(engine):
    theta = torch.randn(5)
    d = KSubset(theta, 2, validate_args=True).expand((3,))
    assert d.batch_shape == (3,) and d.sample().shape == (3, 5)
    with pytest.raises(ValueError, match="not a k-subset"):
        d.log_prob(torch.ones(3, 5))
    assert KSubset(theta, 2, validate_args=False).log_prob(torch.ones(5)) == float("-inf")


def test_construction_errors():
    with pytest.raises(ValueError, match="NaN"):
        KSubset(torch.tensor([0.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="larger than the number of available items"):
        KSubset(torch.randn(3), 4)
