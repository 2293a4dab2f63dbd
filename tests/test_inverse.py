"""The inverse map logits_from_marginals: round trips, boundaries, batches, gradients, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ksubset
from ksubset.core.inverse import logits_from_marginals, sample_from_marginals

from oracle import enumerate_row


def random_pi(n: int, k: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """Feasible targets: the marginals of random logits (so the design exists), in float64."""
    g = torch.Generator().manual_seed(seed)
    return ksubset.marginals(torch.randn(n, generator=g, dtype=torch.float64) * spread, k)


@pytest.mark.parametrize("n,k,spread", [(10, 3, 1.0), (10, 5, 8.0), (1000, 100, 2.0), (1000, 10, 10.0)])
def test_round_trip(n, k, spread):
    pi = random_pi(n, k, seed=n + k, spread=spread)
    stats = {}
    theta = logits_from_marginals(pi, k, stats=stats)
    assert (ksubset.marginals(theta, k) - pi).abs().max() <= 1e-12
    assert torch.sigmoid(theta).sum().item() == pytest.approx(k, abs=1e-9)  # the normalisation
    assert stats["residual"] <= 1e-12 and stats["newton"] + stats["corrections"] >= 1


def test_round_trip_against_enumeration():
    """Independent check at n = 8: the enumerated marginals of the returned logits are pi."""
    pi = random_pi(8, 3, seed=1, spread=2.0)
    theta = logits_from_marginals(pi, 3)
    np.testing.assert_allclose(enumerate_row(theta.numpy(), 3).marginals, pi.numpy(), atol=1e-12)


def test_round_trip_n_1e5():
    g = torch.Generator().manual_seed(2)
    n, k = 100_000, 100
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.05
    pi = w / w.sum() * k
    theta = logits_from_marginals(pi, k)
    assert (ksubset.marginals(theta, k) - pi).abs().max() <= 1e-12


def test_near_boundary_and_exact_boundary():
    n, k = 200, 60
    pi = torch.full((n,), 0.5, dtype=torch.float64)
    pi[:20] = 1e-6
    pi[20:60] = 1 - 1e-6
    pi[60:62] = 0.0  # never selected
    pi[62] = 1.0  # always selected
    pi[63:] = (k - pi[:63].sum()) / (n - 63)
    theta = logits_from_marginals(pi, k)
    assert theta[60].item() == -math.inf and theta[62].item() == math.inf
    assert (ksubset.marginals(theta, k) - pi).abs().max() <= 1e-12
    # the small ones are right in relative terms too
    mu = ksubset.marginals(theta, k)
    assert ((mu[:20] - pi[:20]).abs() / pi[:20]).max() <= 1e-8


def test_batched_per_row_k_and_mask():
    pis = [random_pi(12, 4, seed=3), random_pi(12, 7, seed=4, spread=3.0)]
    pi = torch.stack(pis)
    k = torch.tensor([4, 7])
    mask = torch.ones(2, 12, dtype=torch.bool)
    theta = logits_from_marginals(pi, k, mask)
    assert (ksubset.marginals(theta, k) - pi).abs().max() <= 1e-12
    # masked-out items with pi = 0
    pi2 = pi.clone()
    pi2[0, 0] = 0.0
    pi2[0, 1:] += pi[0, 0] / 11
    pi2[0] = pi2[0] / pi2[0].sum() * 4
    mask[0, 0] = False
    if (pi2[0] < 1).all():
        theta2 = logits_from_marginals(pi2, k, mask)
        assert theta2[0, 0].item() == -math.inf
        assert (ksubset.marginals(theta2, k, mask) - pi2).abs().max() <= 1e-12


def test_gradient_is_the_implicit_function_theorem():
    """gradcheck along the constraint surface: pi(u) = pi0 + u - mean(u) keeps sum(pi) = k."""
    pi0 = random_pi(7, 3, seed=5)
    u = torch.zeros(7, dtype=torch.float64, requires_grad=True)

    def f(u):
        return logits_from_marginals(pi0 + 0.01 * (u - u.mean()), 3)

    torch.autograd.gradcheck(f, (u,), atol=1e-6)


def test_gradient_matches_the_pseudo_inverse_of_the_enumerated_covariance():
    pi = random_pi(6, 2, seed=6).requires_grad_(True)
    theta = logits_from_marginals(pi, 2)
    g = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(theta, pi, g)
    cov = enumerate_row(theta.detach().numpy(), 2).covariance
    s = torch.sigmoid(theta.detach()).numpy()
    w = s * (1 - s) / (s * (1 - s)).sum()
    expected = np.linalg.pinv(cov) @ (g.numpy() - w * g.numpy().sum())
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-8)


def test_sampler_has_the_prescribed_inclusion_probabilities():
    pi = random_pi(10, 4, seed=7, spread=1.5).float()
    S = 40000
    z = sample_from_marginals(pi, 4, sample_shape=(S,), generator=torch.Generator().manual_seed(1))
    assert (z.sum(-1) == 4).all()
    freq = z.double().mean(0)
    se = (pi.double() * (1 - pi.double()) / S).sqrt()
    assert ((freq - pi.double()).abs() / se).max() < 4.5


def test_errors():
    pi = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="sum to k"):
        logits_from_marginals(pi, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        logits_from_marginals(torch.tensor([1.2, -0.2, 1.0], dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="NaN"):
        logits_from_marginals(torch.tensor([math.nan, 0.5, 0.5]), 1)
    with pytest.raises(TypeError, match="floating-point"):
        logits_from_marginals(torch.tensor([0, 1, 0]), 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        logits_from_marginals([0.5, 0.5], 1)
    with pytest.raises(ValueError, match="last dimension"):
        logits_from_marginals(torch.tensor(0.5), 1)
    with pytest.raises(ValueError, match="masked-out"):
        logits_from_marginals(pi, 1, torch.tensor([False, True, True]))
    with pytest.raises(ValueError, match="does not broadcast"):
        logits_from_marginals(pi, 1, torch.tensor([True, True]))
    with pytest.raises(ValueError, match=">= 0"):
        logits_from_marginals(pi, -1)
