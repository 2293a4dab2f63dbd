"""SIMPLE's backward (``Cov(z) g``) on every engine and code path, against enumeration.

In plain eager mode the engines that can keep what the forward computed (the kernels' tilt in the lanes
layout, the closed forms' probabilities) reuse it in the backward; a backward that builds a graph recomputes
through the operators. Every layout is reached here: several short rows (lanes), one row (per-row layout),
``k = 1`` and ``k = n - 1`` as Python ints (the closed forms), with masks and infinite logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ksubset
from ksubset.core import sample_and_marginals

from oracle import enumerate_row


def _logits(B: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(B, n, generator=g, dtype=torch.float64) * 2
    theta[0, 2] = -float("inf")
    mask = torch.ones(B, n, dtype=torch.bool)
    mask[-1, 0] = False
    return theta, mask


def _oracle_cov_g(theta, mask, k, g) -> np.ndarray:
    out = np.zeros(tuple(theta.shape))
    for b in range(theta.shape[0]):
        row, m = theta[b].numpy(), mask[b].numpy()
        e = enumerate_row(row, int(k[b]) if torch.is_tensor(k) else k, m)
        free = np.isfinite(row) & m
        out[b] = np.where(free, e.covariance @ np.where(free, g[b].numpy(), 0.0), 0.0)
    return out


# (B, n, k): several short rows (lanes layout), one row (per-row layout), the two closed forms
CASES = [(11, 9, "rows"), (1, 9, 4), (6, 7, 1), (6, 7, 6), (4, 21, 17)]


def _k(B: int, spec):
    if spec == "rows":  # a per-row k
        return torch.tensor([2, 3, 4, 5, 2, 3, 4, 5, 3, 4, 5])[:B]
    return spec


@pytest.mark.parametrize("B,n,spec", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_simple_backward_is_the_covariance_times_the_upstream_gradient(engine, B, n, spec, dtype):
    theta, mask = _logits(B, n, seed=B + n)
    k = _k(B, spec)
    g = torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = theta.to(dtype).clone().requires_grad_(True)
    z = ksubset.simple(x, k, mask, generator=torch.Generator().manual_seed(0))
    (z * g.to(dtype)).sum().backward()
    tol = 1e-10 if dtype == torch.float64 else 3e-5
    expected = _oracle_cov_g(theta.to(dtype).double(), mask, k, g)
    np.testing.assert_allclose(x.grad.double().numpy(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("B,n,spec", CASES)
def test_graph_building_backward_agrees(engine, B, n, spec):
    """``create_graph=True`` recomputes through the operators; the first derivative must not change."""
    theta, mask = _logits(B, n, seed=7)
    k = _k(B, spec)
    g = torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = theta.clone().requires_grad_(True)
    grads = []
    for create_graph in (False, True):
        z = ksubset.simple(x, k, mask, generator=torch.Generator().manual_seed(0))
        (d,) = torch.autograd.grad((z * g).sum(), x, create_graph=create_graph)
        grads.append(d.detach())
    np.testing.assert_allclose(grads[0].numpy(), grads[1].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[0].numpy(), _oracle_cov_g(theta, mask, k, g), rtol=1e-9, atol=1e-10)


def test_the_draw_does_not_depend_on_whether_a_gradient_follows(engine):
    """The kept path returns the same draws and marginals as the plain one (same generator)."""
    theta, mask = _logits(11, 9, seed=1)
    k = _k(11, "rows")
    out = []
    for requires_grad in (False, True):
        x = theta.clone().requires_grad_(requires_grad)
        z, mu = sample_and_marginals(x, k, mask, generator=torch.Generator().manual_seed(5))
        out.append((z, mu.detach()))
    assert torch.equal(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 6])
@pytest.mark.parametrize("create_graph", [False, True])
def test_closed_forms_backward(k, create_graph):
    """No engine override: ``k = 1`` and ``k = n - 1`` as Python ints take the closed forms (softmax)."""
    theta, mask = _logits(6, 7, seed=k)
    g = torch.randn(6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x = theta.clone().requires_grad_(True)
    z = ksubset.simple(x, k, mask, generator=torch.Generator().manual_seed(0))
    (d,) = torch.autograd.grad((z * g).sum(), x, create_graph=create_graph)
    np.testing.assert_allclose(d.detach().numpy(), _oracle_cov_g(theta, mask, k, g), rtol=1e-10, atol=1e-12)
