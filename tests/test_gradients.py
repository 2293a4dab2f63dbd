"""Gradients: gradcheck, SIMPLE's backward = Cov(z) g by enumeration, k = 1 softmax Jacobian."""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd import gradcheck, gradgradcheck

import ksubset

from oracle import enumerate_row


def test_gradcheck_marginals_entropy_log_partition(engine):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 7, generator=g, dtype=torch.float64).requires_grad_(True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 2] = False
    k = torch.tensor([2, 3, 6])
    assert gradcheck(lambda t: ksubset.marginals(t, k, mask), (theta,))
    assert gradcheck(lambda t: ksubset.entropy(t, k, mask), (theta,))
    assert gradcheck(lambda t: ksubset.log_partition(t, k, mask), (theta,))
    assert gradgradcheck(lambda t: ksubset.log_partition(t, k, mask), (theta,))
    assert gradcheck(lambda t: ksubset.kl_uniform(t, k, mask), (theta,))
    other = torch.randn(3, 7, generator=g, dtype=torch.float64)
    assert gradcheck(lambda t: ksubset.kl_divergence(t, other, k, mask), (theta,))
    z = ksubset.mode(theta.detach(), k, mask)
    assert gradcheck(lambda t: ksubset.log_prob(t, k, z, mask), (theta,))


def test_simple_backward_is_covariance_times_g(engine):
    rng = np.random.default_rng(1)
    for n, k in [(8, 3), (6, 1), (9, 9), (10, 0), (11, 5)]:
        theta = rng.standard_normal(n) * 2
        e = enumerate_row(theta, k)
        g = rng.standard_normal(n)
        t = torch.tensor(theta, requires_grad=True)
        z = ksubset.simple(t, k)
        assert z.sum() == k and set(z.tolist()) <= {0.0, 1.0}
        z.backward(torch.tensor(g))
        assert np.allclose(t.grad.numpy(), e.covariance @ g, atol=1e-10)


def test_simple_with_forced_and_masked_items(engine):
    theta = torch.tensor([[0.2, float("inf"), -1.0, 0.7, float("-inf"), 1.1]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, True, True]])
    free = [0, 2, 5]
    e = enumerate_row(theta[0, free].numpy(), 1)  # k = 2 with one forced item: choose 1 of the free ones
    t = theta.clone().requires_grad_(True)
    z = ksubset.simple(t, 2, mask)
    assert z.sum() == 2 and z[0, 1] == 1 and z[0, 3] == 0 and z[0, 4] == 0
    g = torch.arange(6, dtype=torch.float64)[None]
    z.backward(g)
    expected = np.zeros(6)
    expected[free] = e.covariance @ g[0, free].numpy()
    assert np.allclose(t.grad[0].numpy(), expected, atol=1e-12)


def test_k_equals_one_is_softmax(engine):
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(4, 10, generator=g, dtype=torch.float64)
    assert torch.allclose(ksubset.marginals(theta, 1), torch.softmax(theta, -1), atol=1e-12)
    t = theta.clone().requires_grad_(True)
    up = torch.randn(4, 10, generator=g, dtype=torch.float64)
    ksubset.simple(t, 1).backward(up)
    t2 = theta.clone().requires_grad_(True)
    torch.softmax(t2, -1).backward(up)
    assert torch.allclose(t.grad, t2.grad, atol=1e-12)


def test_simple_forward_is_bit_exact_sample():
    theta = torch.randn(3, 50, requires_grad=True)
    z = ksubset.simple(theta, 7, generator=torch.Generator().manual_seed(4))
    ref = ksubset.sample(theta.detach(), 7, generator=torch.Generator().manual_seed(4))
    assert torch.equal(z.detach(), ref)


def test_half_precision_inputs_keep_dtype_and_grad():
    for dtype in [torch.float16, torch.bfloat16]:
        theta = torch.randn(2, 30).to(dtype).requires_grad_(True)
        mu = ksubset.marginals(theta, 5)
        assert mu.dtype == dtype
        ref = ksubset.marginals(theta.detach().float(), 5)
        assert torch.allclose(mu.float(), ref, atol=1e-2)
        ksubset.simple(theta, 5).sum().backward()
        assert theta.grad.dtype == dtype and torch.isfinite(theta.grad.float()).all()
