"""``kl_divergence`` and its derivatives on every engine and code path, against enumeration.

Two distributions on the same free items take a fused path where the engine offers one (the kernels engine:
one sweep per distribution gives the value and both gradients; a backward that builds a graph recomputes
through the operators); other pairs (different masks, different forced items) take the general composition.
The oracle: ``KL`` by enumeration, ``dKL/dtheta = Cov_p (theta - phi)`` and ``dKL/dphi = mu_q - mu_p``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad as fwAD

import ksubset

from oracle import enumerate_row, kl_rows


def _pair(B: int, n: int, seed: int):
    """Two logit tensors with the same unavailable (-inf) and forced (+inf) items, and a per-row k."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, n, generator=g, dtype=torch.float64) * 2
    phi = torch.randn(B, n, generator=g, dtype=torch.float64) * 2
    for x in (theta, phi):
        x[0, 1] = -float("inf")
        x[-1, 0] = float("inf")
    k = torch.randint(3, n - 2, (B,), generator=g)
    return theta, phi, k


def _oracle(theta: torch.Tensor, phi: torch.Tensor, k: torch.Tensor):
    """KL ``[B]``, dKL/dtheta and dKL/dphi ``[B, n]`` by enumeration."""
    B, n = theta.shape
    kl, d_theta, d_phi = np.zeros(B), np.zeros((B, n)), np.zeros((B, n))
    for b in range(B):
        t, f = theta[b].numpy(), phi[b].numpy()
        kl[b] = kl_rows(t, f, int(k[b]))
        p, q = enumerate_row(t, int(k[b])), enumerate_row(f, int(k[b]))
        free = np.isfinite(t)
        d_theta[b] = np.where(free, p.covariance @ (np.where(free, t, 0.0) - np.where(free, f, 0.0)), 0.0)
        d_phi[b] = np.where(free, q.marginals - p.marginals, 0.0)
    return kl, d_theta, d_phi


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B", [1, 9])
def test_value_and_gradients_match_enumeration(engine, dtype, B):
    theta, phi, k = _pair(B, 9, seed=B)
    t = theta.to(dtype).clone().requires_grad_(True)
    f = phi.to(dtype).clone().requires_grad_(True)
    kl = ksubset.kl_divergence(t, f, k)
    kl.sum().backward()
    kl_ref, dt_ref, df_ref = _oracle(theta.to(dtype).double(), phi.to(dtype).double(), k)
    tol = 1e-9 if dtype == torch.float64 else 3e-5
    np.testing.assert_allclose(kl.detach().double().numpy(), kl_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(t.grad.double().numpy(), dt_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(f.grad.double().numpy(), df_ref, rtol=tol, atol=tol)


def test_graph_building_backward_agrees(engine):
    theta, phi, k = _pair(6, 8, seed=3)
    t, f = theta.clone().requires_grad_(True), phi.clone().requires_grad_(True)
    plain = torch.autograd.grad(ksubset.kl_divergence(t, f, k).sum(), (t, f))
    graphed = torch.autograd.grad(ksubset.kl_divergence(t, f, k).sum(), (t, f), create_graph=True)
    assert graphed[0].requires_grad and graphed[1].requires_grad
    for a, b in zip(plain, graphed, strict=True):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)
    _, dt_ref, df_ref = _oracle(theta, phi, k)
    np.testing.assert_allclose(plain[0].numpy(), dt_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(plain[1].numpy(), df_ref, rtol=1e-9, atol=1e-10)


def test_forward_mode(engine):
    theta, phi, k = _pair(5, 8, seed=4)
    g = torch.Generator().manual_seed(2)
    finite = torch.isfinite(theta)
    tt = torch.where(finite, torch.randn(theta.shape, generator=g, dtype=torch.float64), 0.0)
    tf = torch.where(finite, torch.randn(theta.shape, generator=g, dtype=torch.float64), 0.0)
    with fwAD.dual_level():
        t = fwAD.make_dual(theta.clone().requires_grad_(True), tt)
        f = fwAD.make_dual(phi.clone().requires_grad_(True), tf)
        tangent = fwAD.unpack_dual(ksubset.kl_divergence(t, f, k)).tangent
    _, dt_ref, df_ref = _oracle(theta, phi, k)
    expected = (dt_ref * tt.numpy()).sum(-1) + (df_ref * tf.numpy()).sum(-1)
    np.testing.assert_allclose(tangent.detach().numpy(), expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("offset", [1e4, -3e5])
def test_large_common_offsets_change_nothing(fast_engine, offset):
    """KL is invariant to shifting either argument; float64 keeps it to ``|offset| eps`` per item."""
    theta, phi, k = _pair(16, 12, seed=5)
    base = ksubset.kl_divergence(theta, phi, k)
    shifted = ksubset.kl_divergence(theta - offset / 3, phi + offset, k)
    np.testing.assert_allclose(shifted.numpy(), base.numpy(), rtol=0, atol=40 * abs(offset) * 2.2e-16)
    np.testing.assert_allclose(base.numpy(), _oracle(theta, phi, k)[0], rtol=1e-9, atol=1e-10)


def test_different_free_items_take_the_general_path(engine):
    """An item available to p but not to q: KL is +inf; one forced by q only and optional for p: +inf too;
    the same items with different masks on other rows: finite, as enumeration says."""
    theta, phi, k = _pair(3, 8, seed=6)
    phi = phi.clone()
    phi[1, 5] = -float("inf")  # p may select item 5 of row 1, q cannot
    kl = ksubset.kl_divergence(theta, phi, k)
    assert torch.isinf(kl[1]) and kl[1] > 0
    ref = _oracle(theta[[0, 2]], phi[[0, 2]], k[[0, 2]])[0]
    np.testing.assert_allclose(kl[[0, 2]].numpy(), ref, rtol=1e-9, atol=1e-10)


def test_without_gradients_the_value_is_the_same(engine):
    """Under ``no_grad`` (or on tensors that do not require grad) the fused path skips the covariance sweep."""
    theta, phi, k = _pair(7, 9, seed=8)
    with torch.no_grad():
        plain = ksubset.kl_divergence(theta, phi, k)
    graded = ksubset.kl_divergence(theta.clone().requires_grad_(True), phi, k).detach()
    np.testing.assert_allclose(plain.numpy(), graded.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(plain.numpy(), _oracle(theta, phi, k)[0], rtol=1e-9, atol=1e-10)
