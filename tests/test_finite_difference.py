"""SIMPLE-FD (``simple_fd``), the original SIMPLE code's finite-difference backward, against its definition:
exact samples forward, ``mu(theta) - mu(theta - lam g)`` backward, with marginals from the enumeration oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ksubset import core
from ksubset import estimators as E

from oracle import enumerate_row

N, K = 7, 3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mu(theta_row: torch.Tensor, k: int, mask_row=None) -> np.ndarray:
    return enumerate_row(theta_row.numpy(), k, None if mask_row is None else mask_row.numpy()).marginals


@pytest.mark.parametrize("scale", [False, True])
def test_backward_is_the_difference_of_exact_marginals(scale):
    theta = torch.randn(4, N, dtype=torch.float64, generator=_gen(1))
    theta[1, 2] = float("inf")  # a forced item
    mask = torch.ones(4, N, dtype=torch.bool)
    mask[2, [0, 5]] = False
    g = torch.randn(4, N, dtype=torch.float64, generator=_gen(2))
    logits = theta.clone().requires_grad_(True)
    E.simple_fd(logits, K, mask, generator=_gen(3), lam=1.5, scale=scale).backward(g)
    for r in range(4):
        moved = torch.where(torch.isfinite(theta[r]), theta[r] - 1.5 * g[r], theta[r])
        ref = _mu(theta[r], K, mask[r]) - _mu(moved, K, mask[r])
        np.testing.assert_allclose(logits.grad[r].numpy(), ref / (1.5 if scale else 1.0), rtol=1e-9, atol=1e-12)


def test_small_lam_with_scale_tends_to_simple_backward():
    theta = torch.randn(N, dtype=torch.float64, generator=_gen(4), requires_grad=True)
    g = torch.randn(N, dtype=torch.float64, generator=_gen(5))
    E.simple_fd(theta, K, generator=_gen(6), lam=1e-6, scale=True).backward(g)
    cov = enumerate_row(theta.detach().numpy(), K).covariance
    np.testing.assert_allclose(theta.grad.numpy(), cov @ g.numpy(), rtol=1e-4, atol=1e-6)


def test_forward_is_an_exact_sample():
    theta = torch.randn(50, N, dtype=torch.float64, generator=_gen(7))
    z = E.simple_fd(theta, K, generator=_gen(8))
    assert torch.equal(z, core.sample(theta, K, generator=_gen(8)))  # the k-subset law, not perturb-and-MAP
    assert torch.all(z.sum(-1) == K) and set(z.unique().tolist()) <= {0.0, 1.0}


def test_an_overflowed_gradient_gives_a_nan_row_for_the_loss_scaler():
    theta = torch.randn(2, N, dtype=torch.float64, generator=_gen(9), requires_grad=True)
    g = torch.randn(2, N, dtype=torch.float64, generator=_gen(10))
    g[0, 1] = float("inf")
    E.simple_fd(theta, K, generator=_gen(11)).backward(g)
    assert torch.isnan(theta.grad[0]).all() and torch.isfinite(theta.grad[1]).all()


def test_registered_with_the_original_lam_and_validated():
    assert "simple_fd" in E.available()
    assert E.hyperparameters("simple_fd") == {"lam": 10.0, "scale": False}
    theta = torch.randn(3, N, dtype=torch.float64, generator=_gen(12))
    torch.testing.assert_close(E.get("simple_fd", lam=2.0)(theta, K, generator=_gen(13)),
                               E.simple_fd(theta, K, generator=_gen(13), lam=2.0))
    with pytest.raises(ValueError, match="lam"):
        E.get("simple_fd", lam=0.0)
    with pytest.raises(TypeError, match="scale"):
        E.get("simple_fd", scale=1)
