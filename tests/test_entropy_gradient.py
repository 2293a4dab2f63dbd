"""The entropy's first derivative on every engine and code path, against enumeration.

``dH/dtheta = -Cov(z) theta`` (on free items; 0 on forced and unavailable ones). The kernels engine computes
it in the forward's sweep and the backward reuses it (eager, first order); a backward that builds a graph
recomputes it through the operators; forward mode uses the saved gradient too. Each path is checked here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad as fwAD

import ksubset

from oracle import enumerate_row


def _problem(B: int, n: int, seed: int, scale: float = 2.0):
    """Logits with unavailable (-inf) and forced (+inf) items, a mask, and a per-row k."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, n, generator=g, dtype=torch.float64) * scale
    theta[0, 1] = -float("inf")
    theta[-1, 0] = float("inf")
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[B // 2, n - 1] = False
    k = torch.randint(3, n - 3, (B,), generator=g)  # non-trivial after the forced and missing items
    return theta, mask, k


def _oracle_gradient(theta: torch.Tensor, mask: torch.Tensor, k: torch.Tensor) -> np.ndarray:
    out = np.zeros(tuple(theta.shape))
    for b in range(theta.shape[0]):
        row = theta[b].numpy()
        e = enumerate_row(row, int(k[b]), mask[b].numpy())
        free = np.isfinite(row) & mask[b].numpy()
        out[b] = np.where(free, -(e.covariance @ np.where(free, row, 0.0)), 0.0)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B", [1, 11])  # one row (the per-row layout) and several (the lanes layout)
def test_entropy_gradient_matches_enumeration(engine, dtype, B):
    theta, mask, k = _problem(B, 9, seed=B)
    x = theta.to(dtype).clone().requires_grad_(True)
    ksubset.entropy(x, k, mask).sum().backward()
    expected = _oracle_gradient(theta.to(dtype).double(), mask, k)
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    np.testing.assert_allclose(x.grad.double().numpy(), expected, rtol=tol, atol=tol)


def test_kl_uniform_gradient_is_minus_the_entropy_gradient(engine):
    theta, mask, k = _problem(7, 8, seed=3)
    x = theta.clone().requires_grad_(True)
    ksubset.kl_uniform(x, k, mask).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -_oracle_gradient(theta, mask, k), rtol=1e-9, atol=1e-9)


def test_graph_building_backward_gives_the_same_first_derivative(engine):
    """``create_graph=True`` takes the recomputing path; both must agree with each other and the oracle."""
    theta, mask, k = _problem(6, 8, seed=5)
    x = theta.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(ksubset.entropy(x, k, mask).sum(), x)
    (graphed,) = torch.autograd.grad(ksubset.entropy(x, k, mask).sum(), x, create_graph=True)
    assert graphed.requires_grad
    np.testing.assert_allclose(plain.numpy(), graphed.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(plain.numpy(), _oracle_gradient(theta, mask, k), rtol=1e-9, atol=1e-9)


def test_forward_mode_on_a_tensor_that_also_requires_grad(engine):
    """A dual tensor that requires grad takes the eager fast path; its tangent is ``dH . t``."""
    theta, mask, k = _problem(5, 8, seed=7)
    t = torch.randn(theta.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.where(torch.isfinite(theta) & mask, t, 0.0)
    with fwAD.dual_level():
        x = fwAD.make_dual(theta.clone().requires_grad_(True), t)
        tangent = fwAD.unpack_dual(ksubset.entropy(x, k, mask)).tangent
    expected = (_oracle_gradient(theta, mask, k) * t.numpy()).sum(-1)
    np.testing.assert_allclose(tangent.detach().numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shift", [0.0, 1e4])
def test_entropy_gradient_ignores_a_common_offset(fast_engine, shift):
    """``Cov(z) 1 = 0``: adding a constant to every logit changes neither H nor its gradient (float64)."""
    theta, mask, k = _problem(16, 20, seed=11)
    grads = []
    for s in (0.0, shift):
        x = (theta + s).requires_grad_(True)
        ksubset.entropy(x, k, mask).sum().backward()
        grads.append(x.grad)
    np.testing.assert_allclose(grads[1].numpy(), grads[0].numpy(), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(grads[0].numpy(), _oracle_gradient(theta, mask, k), rtol=1e-8, atol=1e-9)
